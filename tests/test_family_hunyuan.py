"""HunyuanVideo's own behaviour: dual- then single-stream layers, the stock pipeline's prompt encoding and
schedule, its checkpoint's geometry and the method's published defaults for it."""

import numpy as np
import pytest
import torch

from difftrack import list_backbones
from difftrack.backbones.hunyuan import HunyuanVideoBackbone
from difftrack.testing import tiny_backbone, tiny_components

KIND = "hunyuanvideo"


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone(KIND)


def test_layers_are_dual_then_single_stream(bb):
    t = bb.transformer
    assert bb.layers == [b.attn for b in t.transformer_blocks] + [b.attn for b in t.single_transformer_blocks]
    assert bb.num_dual_layers == 1 and bb.num_layers == 2
    assert bb.layers[0].add_q_proj is not None and bb.layers[1].add_q_proj is None
    assert bb.prediction_type() == "flow"


def test_prompt_trim_keeps_prediction(bb):
    """Dropping the masked text padding leaves HunyuanVideo's prediction unchanged."""
    prompts = ["a red disc", "a blue striped square moves right over the wall"]
    padded, pooled, mask = bb.pipeline.encode_prompt(prompts, device="cpu", dtype=torch.float32)
    embeds, extra = bb.encode_conditioning(prompts)
    assert embeds.shape[1] == int(mask.sum(1).max()) < padded.shape[1]
    assert torch.equal(extra["pooled_projections"], pooled)
    latents = torch.randn(2, 2, bb.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = bb.predict(latents, torch.tensor(700.0), padded, pooled_projections=pooled, prompt_attention_mask=mask)
        trimmed = bb.predict(latents, torch.tensor(700.0), embeds, **extra)
    assert (full - trimmed).abs().max() <= 1e-5


def test_schedule_is_the_pipelines(bb):
    import copy

    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps

    sched = copy.deepcopy(bb.scheduler)
    stock, _ = retrieve_timesteps(sched, 30, "cpu", sigmas=np.linspace(1.0, 0.0, 31)[:-1])
    assert torch.equal(bb.timesteps(30), stock)


def test_real_size_structure_and_geometry():
    """The stock default configs are HunyuanVideo's: built on the meta device (no memory, no weights)."""
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel

    with torch.device("meta"):
        transformer, vae = HunyuanVideoTransformer3DModel(), AutoencoderKLHunyuanVideo()
    bb = HunyuanVideoBackbone("meta", transformer, FlowMatchEulerDiscreteScheduler(shift=7.0), vae)
    assert bb.num_dual_layers == 20 and bb.num_layers == 60 and bb.heads == 24
    assert bb.temporal_compression == 4 and bb.spatial_compression == 8
    latents = torch.empty(1, 33, 16, 90, 160, device="meta")  # 129 frames at 720x1280
    geo = bb.geometry(latents, text_tokens=40, frame_size=(720, 1280))
    assert (geo.frames, geo.grid_h, geo.grid_w, geo.num_rgb_frames) == (33, 45, 80, 129)
    assert geo.stride_px == (16.0, 16.0) and geo.text_position == "last"
    assert bb.generation_size() == (129, 720, 1280)


def test_the_registry_names_the_checkpoint():
    entry = {e.name: e for e in list_backbones()}["hunyuanvideo"]
    assert entry.source == "hunyuanvideo-community/HunyuanVideo" and entry.adapter is HunyuanVideoBackbone


def test_method_defaults_come_from_the_architecture():
    """docs/method.md: block 16 at step 29 of 30; no published CAG layers: the middle two."""
    from diffusers import HunyuanVideoTransformer3DModel

    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=24, attention_head_dim=8, num_layers=20,
        num_single_layers=40, num_refiner_layers=1, mlp_ratio=1.0, patch_size=2, patch_size_t=1,
        qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=16,
        rope_axes_dim=(2, 2, 4))
    scheduler = tiny_components(KIND)["scheduler"]
    # Any name: the same weights under a registry name, a hub id or a local directory get the same defaults.
    for name in (KIND, "hunyuanvideo-community/HunyuanVideo", "/some/local/dir"):
        bb = HunyuanVideoBackbone(name, transformer, scheduler)
        assert (bb.track_layers(), bb.default_track_step, bb.default_cag_layers()) == ([16], (29, 30), [29, 30])
