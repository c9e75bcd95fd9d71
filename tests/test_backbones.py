"""Backbone adapters on tiny random configs of every family: loading, geometry, video <-> latents, forward."""

import copy
import json
import os

import numpy as np
import pytest
import torch

from difftrack import UserError, create_backbone, list_backbones
from difftrack.backbones.cogvideox import CogVideoXBackbone, CogVideoXImageToVideoBackbone
from difftrack.backbones.hunyuan import HunyuanVideoBackbone
from difftrack.backbones.ltx import LTXVideoBackbone
from difftrack.backbones.wan import WanBackbone, wan_rotary
from difftrack.backbones.wan22 import Wan22Backbone
from difftrack.testing import TINY_KINDS, save_pipeline, tiny_backbone, tiny_components, tiny_pipeline_class

KINDS = list(TINY_KINDS)
ADAPTER = {"cogvideox-sincos": CogVideoXBackbone, "cogvideox-rope": CogVideoXBackbone, "cogvideox-1.5": CogVideoXBackbone,
           "cogvideox-i2v": CogVideoXImageToVideoBackbone, "hunyuanvideo": HunyuanVideoBackbone, "wan": WanBackbone,
           "ltx-video": LTXVideoBackbone, "wan2.2": Wan22Backbone}
# (temporal compression, spatial compression, patch size) of each family's checkpoints
GEOMETRY = {"cogvideox-sincos": (4, 8, 2), "cogvideox-rope": (4, 8, 2), "cogvideox-1.5": (4, 8, 2), "cogvideox-i2v": (4, 8, 2),
            "hunyuanvideo": (4, 8, 2), "wan": (4, 8, 2), "ltx-video": (8, 32, 1),
            "wan2.2": (4, 16, 2)}
TEXT_POSITION = {"cogvideox-sincos": "first", "cogvideox-rope": "first", "cogvideox-1.5": "first", "cogvideox-i2v": "first",
                 "hunyuanvideo": "last", "wan": "separate", "ltx-video": "separate",
                 "wan2.2": "separate"}


@pytest.fixture(scope="module")
def backbones():
    return {kind: tiny_backbone(kind) for kind in KINDS}


def _video(frames=5, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, frames, 3, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("kind", KINDS)
def test_save_pretrained_round_trip(tmp_path, kind):
    components = tiny_components(kind, seed=3)
    save_pipeline(components, tiny_pipeline_class(kind), tmp_path / kind)
    loaded = create_backbone(str(tmp_path / kind))
    assert type(loaded) is ADAPTER[kind]
    assert loaded.source == str(tmp_path / kind)
    for name, tensor in components["transformer"].state_dict().items():
        assert torch.equal(loaded.transformer.state_dict()[name], tensor), name
    in_memory = tiny_backbone(kind, seed=3)
    latents = torch.randn(1, 2, loaded.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = []
        for bb in (in_memory, loaded):
            embeds, extra = bb.encode_conditioning(["a blue square moves up"])
            outs.append(bb.predict(latents, torch.tensor(300.0), embeds, **extra))
    assert outs[0].shape == latents.shape
    # Same weights (checked bitwise above), but not the same computation: loaded tensors come from
    # other allocations, so BLAS may take other code paths (3.6e-7 apart measured with diffusers 0.42).
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_geometry_values(backbones, kind):
    bb = backbones[kind]
    tc, sc, p = GEOMETRY[kind]
    assert (bb.temporal_compression, bb.spatial_compression, bb.patch_size) == (tc, sc, p)
    c = tc * bb.temporal_patch  # RGB frames a token frame spans (CogVideoX 1.5: two latent frames)
    frames, size = 1 + c, 2 * sc * p  # 2 token frames of 2x2 tokens
    latents = bb.encode_video(_video(frames=frames, size=size))
    geo = bb.geometry(latents, text_tokens=7, frame_size=(size, size * 3 // 2))
    assert (geo.frames, geo.grid_h, geo.grid_w) == (2, 2, 2)
    assert geo.text_position == TEXT_POSITION[kind]
    assert geo.temporal_compression == c and geo.num_rgb_frames == frames
    assert geo.stride_px == (size / 2, size * 3 / 4)
    assert geo.joint_tokens == 8 + (0 if TEXT_POSITION[kind] == "separate" else 7)
    per_frame = bb.encode_video(_video(frames=frames, size=size), frame_as_latent=True)
    geo1 = bb.geometry(per_frame, text_tokens=7, frame_as_latent=True)
    assert geo1.frames == frames and geo1.temporal_compression == 1 and geo1.num_rgb_frames == frames


@pytest.mark.parametrize("kind", KINDS)
def test_encode_decode_shapes_and_frame_as_latent(backbones, kind):
    bb = backbones[kind]
    tc, sc, _ = GEOMETRY[kind]
    # 1 + 2 tc frames -> 3 latent frames: CogVideoX's VAE decodes an even number of latent frames to 4F frames
    # instead of 4F - 3, so an odd count is the one every family's VAE maps back to the input length.
    video = _video(frames=1 + 2 * tc, size=2 * sc)
    latents = bb.encode_video(video)
    pad = bb.latent_frame_padding(3)  # whole temporal patches: CogVideoX 1.5 pads one frame in front
    assert latents.shape == (1, 3 + pad, bb.latent_channels, 2, 2)
    assert torch.equal(latents[:, :pad], latents[:, pad:pad + 1].expand(-1, pad, -1, -1, -1))
    decoded = bb.decode_latents(latents[:, pad:])
    assert decoded.shape == video.shape and decoded.abs().max() <= 1
    per_frame = bb.encode_video(video, frame_as_latent=True)
    assert per_frame.shape == (1, 1 + 2 * tc, bb.latent_channels, 2, 2)
    # Frame-as-latent: latent frame k is frame k encoded alone.
    alone = bb.encode_video(video[:, 3:4])
    assert torch.allclose(per_frame[:, 3:4], alone, atol=1e-6)


def test_wan_latent_normalisation_inverts(backbones):
    bb = backbones["wan"]
    video = _video(frames=5, size=32)
    with torch.no_grad():
        raw = bb.vae.encode(video.permute(0, 2, 1, 3, 4)).latent_dist.mode()
        mean = torch.tensor(bb.vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(bb.vae.config.latents_std).view(1, -1, 1, 1, 1)
        expected = ((raw - mean) / std).permute(0, 2, 1, 3, 4)
        latents = bb.encode_video(video)
        assert torch.allclose(latents, expected, atol=1e-6)
        stock_decoded = bb.vae.decode(raw).sample.permute(0, 2, 1, 3, 4).clamp(-1, 1)
        assert torch.allclose(bb.decode_latents(latents), stock_decoded, atol=1e-5)


def test_wan_rotary_matches_stock_processor(backbones):
    """The rebuilt RoPE applied to hooked q reproduces the stock processor's attention output."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    bb = backbones["wan"]
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


def test_hunyuan_prompt_trim_keeps_prediction(backbones):
    """Dropping the masked text padding leaves HunyuanVideo's prediction unchanged."""
    bb = backbones["hunyuanvideo"]
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


def test_hunyuan_layers_are_dual_then_single(backbones):
    bb = backbones["hunyuanvideo"]
    t = bb.transformer
    assert bb.layers == [b.attn for b in t.transformer_blocks] + [b.attn for b in t.single_transformer_blocks]
    assert bb.num_dual_layers == 1 and bb.num_layers == 2
    assert bb.layers[0].add_q_proj is not None and bb.layers[1].add_q_proj is None


def test_wan_layers_are_self_attention(backbones):
    bb = backbones["wan"]
    assert bb.layers == [b.attn1 for b in bb.transformer.blocks]
    assert all(not attn.is_cross_attention for attn in bb.layers)


def test_prediction_types(backbones):
    assert backbones["cogvideox-rope"].prediction_type() == "v_prediction"
    assert backbones["hunyuanvideo"].prediction_type() == "flow"
    assert backbones["wan"].prediction_type() == "flow"


@pytest.mark.parametrize("kind", KINDS)
def test_frame_count_error_names_valid_counts(backbones, kind):
    bb = backbones[kind]
    tc, sc, _ = GEOMETRY[kind]
    c = tc * bb.temporal_patch
    frames = 2 + 2 * c  # between 1 + 2 c and 1 + 3 c
    with pytest.raises(UserError) as err:
        bb.encode_video(_video(frames=frames, size=2 * sc))
    msg = str(err.value)
    assert "\n" not in msg and str(1 + 2 * c) in msg and str(1 + 3 * c) in msg and "--frame-as-latent" in msg
    assert bb.encode_video(_video(frames=frames, size=2 * sc), frame_as_latent=True).shape[1] == frames


@pytest.mark.parametrize("kind", KINDS)
def test_layer_index_out_of_range(backbones, kind):
    bb = backbones[kind]
    assert bb.check_layers([0, bb.num_layers - 1]) == [0, bb.num_layers - 1]
    for bad in (bb.num_layers, -1):
        with pytest.raises(UserError, match=rf"0\.\.{bb.num_layers - 1}"):
            bb.check_layers([bad])


# ----- registry --------------------------------------------------------------------------------------
def test_registry_names_families():
    entries = {e.name: e for e in list_backbones()}
    assert entries["hunyuanvideo"].source == "hunyuanvideo-community/HunyuanVideo"
    assert entries["wan2.1-t2v-1.3b"].source == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert entries["wan2.2-ti2v-5b"].source == "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    for name in ("cogvideox-2b", "cogvideox-5b", "cogvideox-5b-i2v"):
        assert name in entries


def test_unknown_model_lists_known_names():
    with pytest.raises(UserError) as err:
        create_backbone("cogvidex-2b")
    msg = str(err.value)
    assert "\n" not in msg
    for e in list_backbones():
        assert e.name in msg


def test_local_dir_without_model_index(tmp_path):
    with pytest.raises(UserError, match="model_index.json") as err:
        create_backbone(str(tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["hunyuanvideo", "wan"])
def test_pipeline_dir_with_missing_weights(tmp_path, kind):
    save_pipeline(tiny_components(kind), tiny_pipeline_class(kind), tmp_path)
    os.remove(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(UserError) as err:
        create_backbone(str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and f"{tmp_path / 'transformer'} holds no weights file" in msg


def test_wan_pipelines_of_both_versions_get_their_own_adapter(tmp_path):
    """Wan 2.1 and 2.2 share the WanPipeline class; model_index.json tells them apart, and the two-expert
    A14B layout is refused in one line instead of tracking one expert silently."""
    for kind in ("wan", "wan2.2"):
        save_pipeline(tiny_components(kind), tiny_pipeline_class(kind), tmp_path / kind)
        assert type(create_backbone(str(tmp_path / kind))) is ADAPTER[kind]
    index = tmp_path / "wan2.2" / "model_index.json"
    layout = json.loads(index.read_text())
    index.write_text(json.dumps({**layout, "expand_timesteps": False, "boundary_ratio": 0.875,
                                 "transformer_2": ["diffusers", "WanTransformer3DModel"]}))
    with pytest.raises(UserError, match="two experts") as err:
        create_backbone(str(tmp_path / "wan2.2"))
    assert "\n" not in str(err.value)


def test_unsupported_pipeline_class(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(UserError, match="WanPipeline") as err:
        create_backbone(str(tmp_path))
    assert "HunyuanVideoPipeline" in str(err.value) and "\n" not in str(err.value)


def test_hub_id_not_in_cache():
    with pytest.raises(UserError) as err:
        create_backbone("nobody-here/NotAModel-1B")
    msg = str(err.value)
    assert "\n" not in msg and "nobody-here/NotAModel-1B" in msg and "not in the local Hugging Face cache" in msg


@pytest.mark.parametrize("name", ["hunyuanvideo", "wan2.1-t2v-1.3b"])
def test_registry_entry_without_weights(name):
    entry = {e.name: e for e in list_backbones()}[name]
    if entry.weights_present():
        pytest.skip(f"{entry.source} is in the local cache; the missing-weights path cannot be exercised")
    with pytest.raises(UserError) as err:
        create_backbone(name)
    msg = str(err.value)
    assert "\n" not in msg and entry.source in msg and "huggingface-cli download" in msg


@pytest.mark.parametrize("kind", ["hunyuanvideo", "wan"])
def test_flow_add_noise_matches_stock_scheduler(backbones, kind):
    """Forward noising equals the stock scheduler's own formula at a timestep of its schedule."""
    bb = backbones[kind]
    latents = torch.randn(2, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    timesteps = bb.timesteps(20)
    sched = copy.deepcopy(bb.scheduler)
    if kind == "hunyuanvideo":
        sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, 21)[:-1])
    else:
        sched.set_timesteps(20)
    assert torch.equal(sched.timesteps, timesteps)
    t = timesteps[7]
    if hasattr(sched, "scale_noise"):
        stock = sched.scale_noise(latents, t.reshape(1), noise)
    else:
        stock = sched.add_noise(latents, noise, t.reshape(1))
    diff = (bb.add_noise(latents, noise, t) - stock).abs()
    if kind == "wan":
        # UniPC rounds its timesteps to integers while keeping float sigmas: sigma = t / 1000 is off by
        # less than 1 / 1000.
        assert (diff <= (noise - latents).abs() / 1000 + 1e-6).all()
    else:
        assert diff.max() <= 1e-5


def test_hunyuan_schedule_is_the_pipelines(backbones):
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps

    bb = backbones["hunyuanvideo"]
    sched = copy.deepcopy(bb.scheduler)
    stock, _ = retrieve_timesteps(sched, 30, "cpu", sigmas=np.linspace(1.0, 0.0, 31)[:-1])
    assert torch.equal(bb.timesteps(30), stock)


def test_hunyuan_real_size_structure_and_geometry():
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


@pytest.mark.parametrize("kind", KINDS)
def test_generation_size_is_the_trained_size_or_the_stock_pipelines_default(backbones, kind):
    bb = backbones[kind]
    cfg = bb.transformer.config
    if cfg.get("sample_frames") is None:  # HunyuanVideo and Wan record no sample size: their pipelines' defaults
        assert bb.generation_size() == {"hunyuanvideo": (129, 720, 1280), "wan": (81, 480, 832),
                                        "ltx-video": (161, 512, 704), "wan2.2": (121, 704, 1280)}[kind]
        assert bb.generation_size(5, 32, 48) == (5, 32, 48)
    else:
        frames, height, width = bb.generation_size()
        assert (frames, height) == (cfg.sample_frames, cfg.sample_height * bb.spatial_compression)
    with pytest.raises(UserError, match="--height must be positive"):
        bb.generation_size(5, 0, 48)


def _known_architecture(kind):
    """Stock transformers with a real checkpoint's layer and head counts at tiny width."""
    from diffusers import CogVideoXTransformer3DModel, HunyuanVideoTransformer3DModel

    if kind == "hunyuanvideo":
        return HunyuanVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=24, attention_head_dim=8, num_layers=20,
            num_single_layers=40, num_refiner_layers=1, mlp_ratio=1.0, patch_size=2, patch_size_t=1,
            qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=16,
            rope_axes_dim=(2, 2, 4))
    if kind in ("wan2.1-t2v-1.3b", "wan2.2-ti2v-5b"):
        from diffusers import WanTransformer3DModel

        layers, heads = {"wan2.1-t2v-1.3b": (30, 12), "wan2.2-ti2v-5b": (30, 24)}[kind]
        return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=4,
                                     in_channels=4, out_channels=4, text_dim=8, freq_dim=8, ffn_dim=8,
                                     num_layers=layers, rope_max_seq_len=32)
    if kind == "ltx-video":
        from diffusers import LTXVideoTransformer3DModel

        return LTXVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=32, attention_head_dim=2,
                                          cross_attention_dim=64, num_layers=28, caption_channels=8)
    layers, heads = {"cogvideox-2b": (30, 30), "cogvideox-5b": (42, 48), "cogvideox1.5-5b": (42, 48)}[kind]
    return CogVideoXTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=8 if kind == "cogvideox-2b" else 4, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=8, num_layers=layers, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        max_text_seq_length=8, use_rotary_positional_embeddings=kind != "cogvideox-2b",
        patch_size_t=2 if kind == "cogvideox1.5-5b" else None)


@pytest.mark.parametrize("kind, track_layers, track_step, cag_layers", [
    ("cogvideox-2b", [17], (49, 50), [13, 17, 21]),
    ("cogvideox-5b", [17], (49, 50), [15, 17, 18]),
    ("cogvideox1.5-5b", [17], (49, 50), [15, 17, 18]),  # the 5B's blocks: the method reports no 1.5 run
    ("hunyuanvideo", [16], (29, 30), [29, 30]),  # no published CAG layers: the middle two
    # The method reports nothing on these: the middle block at the last of 50 steps, the middle two for CAG.
    ("wan2.1-t2v-1.3b", [15], (49, 50), [14, 15]),
    ("wan2.2-ti2v-5b", [15], (49, 50), [14, 15]),
    ("ltx-video", [14], (49, 50), [13, 14]),
])
def test_method_defaults_come_from_the_architecture(kind, track_layers, track_step, cag_layers):
    cls = {"hunyuanvideo": HunyuanVideoBackbone, "wan2.1-t2v-1.3b": WanBackbone, "wan2.2-ti2v-5b": Wan22Backbone,
           "ltx-video": LTXVideoBackbone}.get(kind, CogVideoXBackbone)
    template = tiny_components("hunyuanvideo" if kind == "hunyuanvideo" else "cogvideox-rope")
    # Any name: the same weights under a registry name, a hub id or a local directory get the same defaults.
    for name in (kind, "THUDM/CogVideoX-2b", "/some/local/dir"):
        bb = cls(name, _known_architecture(kind), template["scheduler"])
        assert (bb.track_layers(), bb.default_track_step, bb.default_cag_layers()) == (
            track_layers, track_step, cag_layers)


def test_embedded_model_defaults_and_the_middle_layers_elsewhere():
    video = create_backbone("tiny-video")
    assert (video.track_layers(), video.default_track_step, video.default_cag_layers()) == ([5], (44, 50), [4, 5])
    tiny = tiny_backbone("cogvideox-sincos")  # an architecture the method says nothing about
    assert tiny.track_layers() == [tiny.num_layers // 2] and tiny.default_track_step == (49, 50)


@pytest.mark.parametrize("kind", ["cogvideox-rope", "hunyuanvideo", "wan"])
def test_vae_slicing_and_tiling_are_on_and_change_nothing_at_small_sizes(backbones, kind):
    bb = backbones[kind]
    assert bb.vae.use_slicing and bb.vae.use_tiling
    video = _video(frames=3, size=32)
    with torch.no_grad():
        sliced = bb.encode_video(video, frame_as_latent=True)
        bb.vae.use_slicing = bb.vae.use_tiling = False
        try:
            whole = bb.encode_video(video, frame_as_latent=True)
        finally:
            bb.vae.use_slicing = bb.vae.use_tiling = True
    # one sample at a time against one batch: the same convolutions, batched differently
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-5)


def test_hub_id_loads_from_a_cache_laid_out_as_huggingface_cli_download_leaves_it(tmp_path):
    """models--org--name/{blobs, snapshots/<commit> (symlinks), refs/main}, read with HF_HUB_OFFLINE: every
    component (the tokenizer too) must load, as from a local directory."""
    import hashlib
    import os
    import subprocess
    import sys

    src = tmp_path / "src"
    save_pipeline(tiny_components("cogvideox-rope"), tiny_pipeline_class("cogvideox-rope"), src)
    repo = tmp_path / "hub" / "models--tiny-org--tiny-cogvideox"
    commit = "0123456789abcdef0123456789abcdef01234567"
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = ("from difftrack.backbones import create_backbone\n"
            "bb = create_backbone('tiny-org/tiny-cogvideox')\n"
            "print(type(bb).__name__, bb.name, bb.num_layers, bb.encode_prompt(['a red disc']).shape[1])\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-1500:]
    assert run.stdout.split() == ["CogVideoXBackbone", "tiny-org/tiny-cogvideox", "2", "8"]


@pytest.mark.parametrize("kind", ["cogvideox-rope", "hunyuanvideo", "wan"])
def test_empty_prompt_is_cached_so_a_second_run_never_loads_the_text_encoder(tmp_path, monkeypatch, kind):
    from difftrack.backbones import prompt_cache

    monkeypatch.setenv("DIFFTRACK_CACHE", str(tmp_path / "cache"))
    save_pipeline(tiny_components(kind), tiny_pipeline_class(kind), tmp_path / kind)
    first = create_backbone(str(tmp_path / kind))
    assert not type(first).text_encoder.loaded(first)  # loading a model leaves the text encoders on disk
    embeds, extras = first.empty_conditioning()
    assert type(first).text_encoder.loaded(first)
    expected = first.encode_conditioning([""])
    torch.testing.assert_close(embeds, expected[0], rtol=0, atol=0)
    assert len(list((tmp_path / "cache" / "prompt_embeddings").iterdir())) == 1

    second = create_backbone(str(tmp_path / kind))
    cached, cached_extras = second.empty_conditioning()
    assert not type(second).text_encoder.loaded(second)
    torch.testing.assert_close(cached, embeds, rtol=0, atol=0)
    assert sorted(cached_extras) == sorted(extras)
    for name in extras:
        torch.testing.assert_close(cached_extras[name], extras[name], rtol=0, atol=0)

    key = prompt_cache.cache_key(second)
    config = tmp_path / kind / "text_encoder" / "config.json"
    config.write_text(config.read_text().replace("{", '{"_note": "retrained",', 1))
    assert prompt_cache.cache_key(create_backbone(str(tmp_path / kind))) != key  # another text encoder


def test_backbones_built_in_memory_are_not_cached(tmp_path, monkeypatch, backbones):
    monkeypatch.setenv("DIFFTRACK_CACHE", str(tmp_path / "cache"))
    backbones["cogvideox-rope"].empty_conditioning()
    assert not (tmp_path / "cache").exists()
