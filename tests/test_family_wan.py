"""Wan 2.1 and 2.2's own behaviour: self-attention layers, the rebuilt RoPE, telling the two versions' pipeline
directories apart, Wan 2.2's checkpoint geometry and the method's defaults for both."""

import json

import pytest
import torch

from difftrack import UserError, create_backbone, list_backbones
from difftrack.backbones.wan import WanBackbone, wan_rotary
from difftrack.backbones.wan22 import Wan22Backbone
from difftrack.testing import save_pipeline, tiny_backbone, tiny_components, tiny_pipeline_class


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone("wan")


def test_layers_are_self_attention(bb):
    assert bb.layers == [b.attn1 for b in bb.transformer.blocks]
    assert all(not attn.is_cross_attention for attn in bb.layers)
    assert bb.prediction_type() == "flow"


def test_rotary_matches_stock_processor(bb):
    """The rebuilt RoPE applied to hooked q reproduces the stock processor's attention output."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    attn = bb.layers[0]
    hidden = torch.randn(1, 2 * 4 * 4, attn.inner_dim)
    cos, sin = bb.transformer.rope(torch.zeros(1, 4, 2, 8, 8))
    with torch.no_grad():
        stock = WanAttnProcessor()(attn, hidden, None, None, (cos, sin))
        q = attn.norm_q(attn.to_q(hidden)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(hidden)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(hidden).unflatten(2, (attn.heads, -1))
        q, k = wan_rotary(q, cos, sin), wan_rotary(k, cos, sin)
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = attn.to_out[0](out.transpose(1, 2).flatten(2))
    assert (out - stock).abs().max() <= 1e-5


def test_pipelines_of_both_versions_get_their_own_adapter(tmp_path):
    """Wan 2.1 and 2.2 share the WanPipeline class; model_index.json tells them apart, and the two-expert
    A14B layout is refused in one line instead of tracking one expert silently."""
    for kind, adapter in (("wan", WanBackbone), ("wan2.2", Wan22Backbone)):
        save_pipeline(tiny_components(kind), tiny_pipeline_class(kind), tmp_path / kind)
        assert type(create_backbone(str(tmp_path / kind))) is adapter
    index = tmp_path / "wan2.2" / "model_index.json"
    layout = json.loads(index.read_text())
    index.write_text(json.dumps({**layout, "expand_timesteps": False, "boundary_ratio": 0.875,
                                 "transformer_2": ["diffusers", "WanTransformer3DModel"]}))
    with pytest.raises(UserError, match="two experts") as err:
        create_backbone(str(tmp_path / "wan2.2"))
    assert "\n" not in str(err.value)


def test_wan22_real_size_structure_and_geometry():
    """Wan2.2-TI2V-5B's configs on the meta device: 121 frames at 704x1280 -> 31 latent frames of 44x80
    cells (the VAE's 2x2 patches, then 8x) -> 22x40 tokens a frame, 48 channels."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    with torch.device("meta"):
        transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128,
                                            in_channels=48, out_channels=48, text_dim=4096, freq_dim=256,
                                            ffn_dim=14336, num_layers=30, cross_attn_norm=True,
                                            qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
        vae = AutoencoderKLWan(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12,
                               out_channels=12, patch_size=2, scale_factor_spatial=16, latents_mean=[0.0] * 48,
                               latents_std=[1.0] * 48)
    bb = Wan22Backbone("meta", transformer, UniPCMultistepScheduler(flow_shift=5.0), vae)
    assert (bb.num_layers, bb.heads, bb.latent_channels) == (30, 24, 48)
    assert (bb.temporal_compression, bb.spatial_compression, bb.patch_size) == (4, 16, 2)
    assert bb.generation_size() == (121, 704, 1280) and bb.max_frames == 31
    latents = torch.empty(1, 31, 48, 44, 80, device="meta")
    geo = bb.geometry(latents, text_tokens=0, frame_size=(704, 1280))
    assert (geo.frames, geo.grid_h, geo.grid_w, geo.num_rgb_frames) == (31, 22, 40, 121)
    assert geo.stride_px == (32.0, 32.0) and geo.text_position == "separate"


def test_the_registry_names_both_checkpoints():
    entries = {e.name: e for e in list_backbones()}
    assert entries["wan2.1-t2v-1.3b"].source == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert entries["wan2.2-ti2v-5b"].source == "Wan-AI/Wan2.2-TI2V-5B-Diffusers"


@pytest.mark.parametrize("name, adapter, heads", [("wan2.1-t2v-1.3b", WanBackbone, 12),
                                                  ("wan2.2-ti2v-5b", Wan22Backbone, 24)])
def test_method_defaults_come_from_the_architecture(name, adapter, heads):
    """The method reports nothing on Wan: the middle block at the last of 50 steps, the middle two for CAG."""
    from diffusers import WanTransformer3DModel

    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=4,
                                        in_channels=4, out_channels=4, text_dim=8, freq_dim=8, ffn_dim=8,
                                        num_layers=30, rope_max_seq_len=32)
    bb = adapter(name, transformer, tiny_components("wan")["scheduler"])
    assert (bb.track_layers(), bb.default_track_step, bb.default_cag_layers()) == ([15], (49, 50), [14, 15])
