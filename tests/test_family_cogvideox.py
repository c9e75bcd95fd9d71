"""CogVideoX's own behaviour: its checkpoints in the registry, v-prediction, and the method's published
defaults for the 2B, 5B and 1.5 architectures."""

import pytest

from difftrack import list_backbones
from difftrack.backbones.cogvideox import CogVideoXBackbone
from difftrack.testing import tiny_backbone, tiny_components


def test_the_registry_names_every_checkpoint():
    entries = {e.name for e in list_backbones()}
    assert {"cogvideox-2b", "cogvideox-5b", "cogvideox1.5-5b", "cogvideox-5b-i2v"} <= entries


def test_predicts_v():
    assert tiny_backbone("cogvideox-rope").prediction_type() == "v_prediction"


@pytest.mark.parametrize("kind, layers, heads, track_layers, cag_layers", [
    ("cogvideox-2b", 30, 30, [17], [13, 17, 21]),
    ("cogvideox-5b", 42, 48, [17], [15, 17, 18]),
    ("cogvideox1.5-5b", 42, 48, [17], [15, 17, 18]),  # the 5B's blocks: the method reports no 1.5 run
])
def test_method_defaults_come_from_the_architecture(kind, layers, heads, track_layers, cag_layers):
    """docs/method.md sections 4 and 5: tracking block 17 at the last of 50 steps; CAG blocks of the authors'
    runs."""
    from diffusers import CogVideoXTransformer3DModel

    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=8 if kind == "cogvideox-2b" else 4, in_channels=4,
        out_channels=4, time_embed_dim=8, text_embed_dim=8, num_layers=layers, sample_width=8, sample_height=8,
        sample_frames=9, patch_size=2, max_text_seq_length=8, use_rotary_positional_embeddings=kind != "cogvideox-2b",
        patch_size_t=2 if kind == "cogvideox1.5-5b" else None)
    scheduler = tiny_components("cogvideox-rope")["scheduler"]
    # Any name: the same weights under a registry name, a hub id or a local directory get the same defaults.
    for name in (kind, "THUDM/CogVideoX-2b", "/some/local/dir"):
        bb = CogVideoXBackbone(name, transformer, scheduler)
        assert (bb.track_layers(), bb.default_track_step, bb.default_cag_layers()) == (
            track_layers, (49, 50), cag_layers)
