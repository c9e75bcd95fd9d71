"""LTX-Video's own behaviour: its checkpoint in the registry and the method's defaults for it."""

from difftrack import list_backbones
from difftrack.backbones.ltx import LTXVideoBackbone
from difftrack.testing import tiny_components


def test_the_registry_names_the_checkpoint():
    entry = {e.name: e for e in list_backbones()}["ltx-video"]
    assert entry.source == "Lightricks/LTX-Video" and entry.adapter is LTXVideoBackbone and entry.defaults()


def test_method_defaults_come_from_the_architecture():
    """The method reports nothing on LTX-Video: the middle block at the last of 50 steps, the middle two for CAG."""
    from diffusers import LTXVideoTransformer3DModel

    transformer = LTXVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=32,
                                             attention_head_dim=2, cross_attention_dim=64, num_layers=28,
                                             caption_channels=8)
    bb = LTXVideoBackbone("ltx-video", transformer, tiny_components("ltx-video")["scheduler"])
    assert (bb.track_layers(), bb.default_track_step, bb.default_cag_layers()) == ([14], (49, 50), [13, 14])
