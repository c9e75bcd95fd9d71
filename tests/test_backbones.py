"""Backbone adapters on every family's tiny configuration: loading, geometry, video <-> latents, schedules,
forward, the empty prompt's cache; and the registry's own paths.

The families come from the registry (``tiny_configs()``) when the tests are collected, with the facts each
tiny configuration records (its checkpoints' VAE compression and patch size) and its adapter's: a new family
runs through every check here without editing this file, as the throw-away family of the last test shows.
Checks of one family's own behaviour live in tests/test_family_<family>.py.
"""

import copy
import gc
import inspect
import os
import weakref

import pytest
import torch

from difftrack import UserError, create_backbone, list_backbones
from difftrack.backbones import tiny_configs
from difftrack.testing import save_pipeline, tiny_backbone, tiny_components, tiny_pipeline_class

pytest_plugins = ("pytester",)


def pytest_generate_tests(metafunc):
    if "kind" in metafunc.fixturenames:
        metafunc.parametrize("kind", list(tiny_configs()))


class _BuiltOnFirstUse(dict):
    def __missing__(self, kind):
        self[kind] = tiny_backbone(kind)
        return self[kind]


@pytest.fixture(scope="module")
def backbones():
    return _BuiltOnFirstUse()


def _video(frames=5, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, frames, 3, size, size, generator=g) * 2 - 1


def _compression(kind):
    """(temporal, spatial) VAE compression and patch size of the kind's checkpoints."""
    config = tiny_configs()[kind]
    return (*config.compression, config.patch_size)


def test_save_pretrained_round_trip(tmp_path, kind):
    components = tiny_components(kind, seed=3)
    save_pipeline(components, tiny_pipeline_class(kind), tmp_path / kind)
    loaded = create_backbone(str(tmp_path / kind))
    assert type(loaded) is tiny_configs()[kind].backbone_class
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


def test_geometry_values(backbones, kind):
    bb = backbones[kind]
    tc, sc, p = _compression(kind)
    assert (bb.temporal_compression, bb.spatial_compression, bb.patch_size) == (tc, sc, p)
    c = tc * bb.temporal_patch  # RGB frames a token frame spans (temporal patches: several latent frames)
    frames, size = 1 + c, 2 * sc * p  # 2 token frames of 2x2 tokens
    latents = bb.encode_video(_video(frames=frames, size=size))
    geo = bb.geometry(latents, text_tokens=7, frame_size=(size, size * 3 // 2))
    assert (geo.frames, geo.grid_h, geo.grid_w) == (2, 2, 2)
    assert geo.text_position == type(bb).text_position
    assert geo.temporal_compression == c and geo.num_rgb_frames == frames
    assert geo.stride_px == (size / 2, size * 3 / 4)
    assert geo.joint_tokens == 8 + (0 if geo.text_position == "separate" else 7)
    per_frame = bb.encode_video(_video(frames=frames, size=size), frame_as_latent=True)
    geo1 = bb.geometry(per_frame, text_tokens=7, frame_as_latent=True)
    assert geo1.frames == frames and geo1.temporal_compression == 1 and geo1.num_rgb_frames == frames


def test_encode_decode_shapes_and_frame_as_latent(backbones, kind):
    bb = backbones[kind]
    tc, sc, _ = _compression(kind)
    # 1 + 2 tc frames -> 3 latent frames: some VAEs decode an even number of latent frames to tc F frames
    # instead of tc F - 3, so an odd count is the one every family's VAE maps back to the input length.
    video = _video(frames=1 + 2 * tc, size=2 * sc)
    latents = bb.encode_video(video)
    pad = bb.latent_frame_padding(3)  # whole temporal patches: padded in front
    assert latents.shape == (1, 3 + pad, bb.latent_channels, 2, 2)
    assert torch.equal(latents[:, :pad], latents[:, pad:pad + 1].expand(-1, pad, -1, -1, -1))
    decoded = bb.decode_latents(latents[:, pad:])
    assert decoded.shape == video.shape and decoded.abs().max() <= 1
    per_frame = bb.encode_video(video, frame_as_latent=True)
    assert per_frame.shape == (1, 1 + 2 * tc, bb.latent_channels, 2, 2)
    # Frame-as-latent: latent frame k is frame k encoded alone.
    alone = bb.encode_video(video[:, 3:4])
    assert torch.allclose(per_frame[:, 3:4], alone, atol=1e-6)


def test_latents_are_the_stock_vaes_normalised_and_decode_inverts_it(backbones, kind):
    bb = backbones[kind]
    tc, sc, _ = _compression(kind)
    video = _video(frames=1 + 2 * tc, size=2 * sc)
    with torch.no_grad():
        raw = bb.vae.encode(video.permute(0, 2, 1, 3, 4)).latent_dist.mode()
        mean, std, scale = (torch.as_tensor(v, dtype=torch.float32).view(1, -1, 1, 1, 1)
                            for v in bb.latent_statistics())
        expected = ((raw - mean) * scale / std).permute(0, 2, 1, 3, 4)
        latents = bb.encode_video(video)
        pad = bb.latent_frame_padding(raw.shape[2])
        torch.testing.assert_close(latents[:, pad:], expected, rtol=0, atol=1e-6)
        stock_decoded = bb.vae.decode(raw).sample.permute(0, 2, 1, 3, 4).clamp(-1, 1)
        torch.testing.assert_close(bb.decode_latents(latents[:, pad:]), stock_decoded, rtol=0, atol=1e-5)


def test_frame_count_error_names_valid_counts(backbones, kind):
    bb = backbones[kind]
    tc, sc, _ = _compression(kind)
    c = tc * bb.temporal_patch
    frames = 2 + 2 * c  # between 1 + 2 c and 1 + 3 c
    with pytest.raises(UserError) as err:
        bb.encode_video(_video(frames=frames, size=2 * sc))
    msg = str(err.value)
    assert "\n" not in msg and str(1 + 2 * c) in msg and str(1 + 3 * c) in msg and "--frame-as-latent" in msg
    assert bb.encode_video(_video(frames=frames, size=2 * sc), frame_as_latent=True).shape[1] == frames


def test_layer_index_out_of_range(backbones, kind):
    bb = backbones[kind]
    assert bb.check_layers([0, bb.num_layers - 1]) == [0, bb.num_layers - 1]
    for bad in (bb.num_layers, -1):
        with pytest.raises(UserError, match=rf"0\.\.{bb.num_layers - 1}"):
            bb.check_layers([bad])


def test_an_architecture_without_published_defaults_gets_the_middle_layers(backbones, kind):
    bb = backbones[kind]  # tiny widths: no published architecture
    n = bb.num_layers
    assert bb.track_layers() == [n // 2] and bb.default_track_step == type(bb).fallback_track_step
    assert bb.default_cag_layers() == sorted({max(n // 2 - 1, 0), n // 2})


def test_add_noise_matches_the_stock_scheduler(backbones, kind):
    """Forward noising equals the stock scheduler's own formula at a timestep of the family's schedule."""
    bb = backbones[kind]
    latents = torch.randn(2, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    sched = bb.schedule(20)
    t = sched.timesteps[7]
    if hasattr(sched, "scale_noise"):
        stock = sched.scale_noise(latents, t.reshape(1), noise)
    else:
        stock = sched.add_noise(latents, noise, t.reshape(1))
    # Schedulers that round their timesteps to integers keep float sigmas: sigma = t / 1000 is off by less
    # than 1 / 1000.
    assert ((bb.add_noise(latents, noise, t) - stock).abs() <= (noise - latents).abs() / 1000 + 1e-5).all()


def test_generation_size_is_the_trained_size_or_the_stock_pipelines_default(backbones, kind):
    bb = backbones[kind]
    cfg = bb.transformer.config
    if cfg.get("sample_frames") is None:  # configs that record no sample size: the stock pipeline's default
        assert bb.generation_size() == type(bb).pipeline_default_size
        assert bb.generation_size(5, 32, 48) == (5, 32, 48)
    else:
        frames, height, width = bb.generation_size()
        assert (frames, height) == (cfg.sample_frames, cfg.sample_height * bb.spatial_compression)
    with pytest.raises(UserError, match="--height must be positive"):
        bb.generation_size(5, 0, 48)


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


def test_pipeline_dir_with_missing_weights(tmp_path, kind):
    save_pipeline(tiny_components(kind), tiny_pipeline_class(kind), tmp_path)
    os.remove(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(UserError) as err:
        create_backbone(str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and f"{tmp_path / 'transformer'} holds no weights file" in msg


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


def test_backbones_built_in_memory_are_not_cached(tmp_path, monkeypatch, backbones, kind):
    monkeypatch.setenv("DIFFTRACK_CACHE", str(tmp_path / "cache"))
    backbones[kind].empty_conditioning()
    assert not (tmp_path / "cache").exists()


# ----- registry --------------------------------------------------------------------------------------
def test_every_family_with_a_tiny_configuration_has_a_named_checkpoint():
    assert {c.backbone_class for c in tiny_configs().values()} <= {e.adapter for e in list_backbones()}


def test_unknown_model_lists_known_names():
    with pytest.raises(UserError) as err:
        create_backbone("not-a-model-name")
    msg = str(err.value)
    assert "\n" not in msg
    for e in list_backbones():
        assert e.name in msg


def test_local_dir_without_model_index(tmp_path):
    with pytest.raises(UserError, match="model_index.json") as err:
        create_backbone(str(tmp_path))
    assert "\n" not in str(err.value)


def test_unsupported_pipeline_class(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(UserError) as err:
        create_backbone(str(tmp_path))
    assert "\n" not in str(err.value)
    for config in tiny_configs().values():
        assert config.pipeline_class in str(err.value)


def test_hub_id_not_in_cache():
    with pytest.raises(UserError) as err:
        create_backbone("nobody-here/NotAModel-1B")
    msg = str(err.value)
    assert "\n" not in msg and "nobody-here/NotAModel-1B" in msg and "not in the local Hugging Face cache" in msg


@pytest.mark.parametrize("name", [e.name for e in list_backbones() if e.source.count("/") == 1])  # hub ids
def test_registry_entry_without_weights(name):
    entry = {e.name: e for e in list_backbones()}[name]
    if entry.weights_present():
        pytest.skip(f"{entry.source} is in the local cache; the missing-weights path cannot be exercised")
    with pytest.raises(UserError) as err:
        create_backbone(name)
    msg = str(err.value)
    assert "\n" not in msg and entry.source in msg and "huggingface-cli download" in msg


def test_hub_id_loads_from_a_cache_laid_out_as_huggingface_cli_download_leaves_it(tmp_path):
    """models--org--name/{blobs, snapshots/<commit> (symlinks), refs/main}, read with HF_HUB_OFFLINE: every
    component (the tokenizer too) must load, as from a local directory."""
    import hashlib
    import subprocess
    import sys

    kind = next(iter(tiny_configs()))
    src = tmp_path / "src"
    save_pipeline(tiny_components(kind), tiny_pipeline_class(kind), src)
    repo = tmp_path / "hub" / "models--tiny-org--tiny-model"
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
            "bb = create_backbone('tiny-org/tiny-model')\n"
            "print(type(bb).__name__, bb.name, bb.num_layers, bb.encode_prompt(['a red disc']).shape[1])\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-1500:]
    in_memory = tiny_backbone(kind)
    assert run.stdout.split() == [type(in_memory).__name__, "tiny-org/tiny-model", str(in_memory.num_layers),
                                  str(in_memory.encode_prompt(["a red disc"]).shape[1])]


# ----- a family added without editing this file ------------------------------------------------------
@pytest.fixture
def throwaway_family():
    """A family that exists for one test: an existing family's adapter and stock components under a new
    family name, saved by its own pipeline class, with its tiny configuration and pipeline loader registered
    in copies of the registry's tables; afterwards the registry is as it was and the family is gone."""
    import diffusers

    from difftrack.backbones import _registry, register_component_loader, register_tiny_config

    template = next(iter(tiny_configs().values()))
    adapter = type("ThrowawayBackbone", (template.backbone_class,), {"family": "throwaway"})
    pipeline = type("ThrowawayPipeline", (getattr(diffusers, template.pipeline_class),), {})
    classes = {name: type(component) for name, component in template.build().items()}
    with pytest.MonkeyPatch.context() as mp:
        for table in ("_TINY_CONFIGS", "_PIPELINE_LOADERS"):
            mp.setattr(_registry, table, copy.copy(getattr(_registry, table)))
        mp.setattr(diffusers, pipeline.__name__, pipeline, raising=False)  # where tiny_pipeline_class looks
        register_component_loader(pipeline.__name__, adapter, lambda: classes)
        register_tiny_config("throwaway", template.build, pipeline.__name__, adapter,
                             compression=template.compression, patch_size=template.patch_size,
                             pipeline_kwargs=template.pipeline_kwargs)
        yield "throwaway"
    assert "throwaway" not in tiny_configs() and pipeline.__name__ not in _registry._PIPELINE_LOADERS
    gone = weakref.ref(adapter)
    del adapter, pipeline, classes
    gc.collect()
    assert gone() is None  # no Backbone subclass of it is left for the tests that walk the adapters


def test_a_family_registered_before_collection_runs_through_every_parametrised_check(throwaway_family, pytester):
    checks = [name for name, test in globals().items()
              if name.startswith("test_") and "kind" in inspect.signature(test).parameters]
    result = pytester.runpytest_inprocess(__file__, "-k", throwaway_family, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(checks))
    ran = {report.nodeid.split("::")[-1] for report in result.reprec.getreports("pytest_runtest_logreport")
           if report.when == "call"}
    assert ran == {f"{name}[{throwaway_family}]" for name in checks}
