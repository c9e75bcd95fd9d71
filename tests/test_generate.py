"""`difftrack generate`: guided sampling end to end on a tiny embedded-architecture model, and bad input."""

import json

import numpy as np
import pytest
import torch

from difftrack.cli import main
from difftrack.guidance import GuidanceConfig
from difftrack.io import read_video
from difftrack.sampling import sample

PROMPT = "a striped disc moves left over a brick wall"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A randomly initialised model with the embedded model's architecture, saved as tiny-video is."""
    from difftrack.backbones.embedded import build_components, model_config, save_components

    path = tmp_path_factory.mktemp("model") / "tiny"
    config = model_config(layers=3, heads=2, head_dim=16, size=16, frames=3, text_tokens=6)
    save_components(build_components(config), path, frames_per_sample=3)
    return path


@pytest.fixture(scope="module")
def backbone(model_dir):
    import difftrack

    return difftrack.create_backbone(str(model_dir))


def _sample(backbone, guidance, seed=5, steps=3):
    return sample(backbone, PROMPT, num_frames=3, height=16, width=16, num_steps=steps, seed=seed, guidance=guidance,
                  output="tensor", progress=False)


def test_cag_scale_zero_equals_cfg_exactly(backbone):
    cfg = _sample(backbone, GuidanceConfig("cfg", 6.0))
    cag0 = _sample(backbone, GuidanceConfig("cag", 6.0, 0.0, (1,)))
    assert torch.equal(cfg, cag0)
    cag = _sample(backbone, GuidanceConfig("cag", 6.0, 3.0, (1,)))
    assert (cag - cfg).abs().max() > 1e-3


def test_same_seed_same_video_and_sequential_branches(backbone):
    config = GuidanceConfig("cag", 6.0, 1.0, (0, 2))
    a = _sample(backbone, config)
    assert torch.equal(a, _sample(backbone, config))
    sequential = GuidanceConfig("cag", 6.0, 1.0, (0, 2), sequential_branches=True)
    torch.testing.assert_close(_sample(backbone, sequential), a, rtol=1e-4, atol=1e-4)
    assert (_sample(backbone, config, seed=6) - a).abs().max() > 1e-3


def _cli(capsys, *argv):
    """Exit code and the error lines on stderr (library progress bars, e.g. weight loading, left out)."""
    code = main(["generate", *map(str, argv)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines()]
    return code, [line for line in lines if line and "it/s]" not in line and "s/it]" not in line]


def test_generate_one_video(model_dir, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    code, err = _cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--guidance", "cag", "--cag-layers", 1, 2,
                     "--cag-scale", 1.5, "--steps", 2, "--seed", 3, "--out", out)
    assert code == 0, err
    video, _ = read_video(out)
    assert video.shape == (3, 16, 16, 3)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["guidance"] == "cag" and meta["cag_layers"] == [1, 2] and meta["cag_scale"] == 1.5
    assert meta["seed"] == 3 and meta["prompt"] == PROMPT


def test_prompts_file_writes_one_video_per_prompt_and_seed(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# demo\na striped disc moves up\n\nthe camera pans over a uniform brick wall\n")
    out = tmp_path / "videos"
    out.mkdir()
    code, err = _cli(capsys, "--model", model_dir, "--prompts-file", prompts, "--seed", 0, 1, "--steps", 1,
                     "--guidance", "cfg", "--out", out)
    assert code == 0, err
    assert len(list(out.glob("*.mp4"))) == 4 and len(list(out.glob("*.json"))) == 4


def test_cag_layers_auto_reads_the_recommendation(model_dir, tmp_path, capsys):
    rec = tmp_path / "analysis"
    rec.mkdir()
    (rec / "recommendation.json").write_text(json.dumps({"model": "tiny", "layers": [2], "steps": [0],
                                                         "metric": "accuracy"}))
    out = tmp_path / "auto.mp4"
    code, err = _cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--guidance", "cag", "--cag-layers", "auto",
                     "--recommendation", rec, "--steps", 1, "--out", out)
    assert code == 0, err
    assert json.loads(out.with_suffix(".json").read_text())["cag_layers"] == [2]


@pytest.mark.parametrize("argv, message", [
    (["--cag-layers", 7], "out of range"),
    (["--cag-layers", "x"], "integers or `auto`"),
    (["--cag-layers", "auto"], "--recommendation"),
    (["--cag-scale", -1], ">= 0"),
    (["--cag-scale", "abc"], "number"),
    (["--cfg-scale", "nan"], "finite"),
])
def test_bad_guidance_input(model_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "bad.mp4"
    code, err = _cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--guidance", "cag", "--steps", 1,
                     "--out", out, *argv)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert list(tmp_path.iterdir()) == []


def test_bad_output_and_prompts(model_dir, tmp_path, capsys):
    code, err = _cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--out", tmp_path / "missing" / "v.mp4")
    assert code == 2 and len(err) == 1 and "does not exist" in err[0]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing here\n")
    out = tmp_path / "out"
    out.mkdir()
    code, err = _cli(capsys, "--model", model_dir, "--prompts-file", empty, "--out", out)
    assert code == 2 and len(err) == 1 and "holds no prompt" in err[0]
    code, err = _cli(capsys, "--model", model_dir, "--prompt", " ", "--out", out / "v.mp4")
    assert code == 2 and len(err) == 1 and "empty" in err[0]
    assert list(out.iterdir()) == []


def test_wan_refuses_cag(tmp_path, capsys):
    from difftrack.testing import save_pipeline, tiny_components, tiny_pipeline_class

    path = tmp_path / "wan"
    save_pipeline(tiny_components("wan"), tiny_pipeline_class("wan"), path)
    out = tmp_path / "w.mp4"
    code, err = _cli(capsys, "--model", path, "--prompt", PROMPT, "--guidance", "cag", "--cag-layers", 0,
                     "--steps", 1, "--out", out)
    assert code == 2 and len(err) == 1 and "separate cross-attention" in err[0]
    assert not out.exists()


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--guidance cag" in text and "--prompts-file" in text
    assert all(flag in text for flag in ("--cag-layers", "--cag-scale", "--cfg-scale", "--sequential-branches"))


@pytest.mark.parametrize("kind", ["hunyuanvideo", "cogvideox-rope"])
def test_sampler_steps_through_the_schedule_tracking_and_analysis_index(kind):
    from difftrack.sampling import sample
    from difftrack.testing import tiny_backbone

    bb = tiny_backbone(kind)
    seen = []
    sample(bb, "a disc moves up", num_frames=9, height=32, width=32, num_steps=4, seed=0,
           on_step=lambda i, t: seen.append(float(t)))
    assert seen == bb.timesteps(4).tolist()  # HunyuanVideo: the stock pipeline's sigmas, in both


def test_image_to_video_generates_from_the_given_first_frame_and_refuses_without_it(tmp_path, capsys):
    import cv2

    from difftrack.testing import save_pipeline, tiny_components, tiny_pipeline_class

    path = tmp_path / "i2v"
    save_pipeline(tiny_components("cogvideox-i2v"), tiny_pipeline_class("cogvideox-i2v"), path)
    images = {}
    for name, colour in (("red", (0, 0, 255)), ("blue", (255, 0, 0))):
        images[name] = tmp_path / f"{name}.png"
        cv2.imwrite(str(images[name]), np.full((40, 56, 3), colour, np.uint8))  # another size than the video
    common = ["--model", path, "--prompt", "a red disc moves left", "--steps", 2, "--frames", 9, "--height", 32, "--width", 32,
              "--guidance", "none"]
    videos = {}
    for name, image in images.items():
        out = tmp_path / f"{name}.mp4"
        code, err = _cli(capsys, *common, "--image", image, "--out", out)
        assert code == 0, err
        videos[name], _ = read_video(out)
        assert json.loads(out.with_suffix(".json").read_text())["image"] == str(image)
    assert videos["red"].shape == (9, 32, 32, 3)
    assert not np.array_equal(videos["red"], videos["blue"])  # the first frame conditions the video
    code, err = _cli(capsys, *common, "--out", tmp_path / "none.mp4")
    assert code == 2 and len(err) == 1 and "pass --image" in err[0] and not (tmp_path / "none.mp4").exists()
    code, err = _cli(capsys, "--model", path.parent / "missing", "--prompt", PROMPT, "--image", tmp_path / "no.png",
                     "--out", tmp_path / "x.mp4")
    assert code == 2 and len(err) == 1


def test_text_to_video_refuses_an_image(tmp_path, capsys, model_dir):
    image = tmp_path / "frame.png"
    import cv2

    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    code, err = _cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--image", image, "--steps", 1,
                     "--out", tmp_path / "v.mp4")
    assert code == 2 and len(err) == 1 and "not an image-to-video model" in err[0]
    assert not (tmp_path / "v.mp4").exists()


def test_learned_positions_fix_the_size_instead_of_a_silent_swap():
    """CogVideoX-5B-I2V's positions are learned for its trained size: tracking resizes to it, generation
    refuses other sizes, and latents of another frame count fail in one line (diffusers would swap in
    sin-cos positions)."""
    from diffusers import CogVideoXTransformer3DModel

    from difftrack.backbones.cogvideox import CogVideoXImageToVideoBackbone
    from difftrack.errors import UserError
    from difftrack.testing import tiny_components

    c = tiny_components("cogvideox-i2v")
    config = {k: v for k, v in c["transformer"].config.items() if not k.startswith("_")}
    transformer = CogVideoXTransformer3DModel(**{**config, "use_learned_positional_embeddings": True}).eval()
    bb = CogVideoXImageToVideoBackbone("tiny-i2v-learned", transformer, c["scheduler"], c["vae"],
                                       c["text_encoder"], c["tokenizer"])
    assert bb.working_size(123, 77) == (64, 64) and bb.generation_size() == (9, 64, 64)
    with pytest.raises(UserError, match="learned positions for 9 frames at 64x64"):
        bb.generation_size(9, 32, 32)
    embeds, extra = bb.encode_conditioning([PROMPT])
    with torch.no_grad():
        assert bb.predict(torch.zeros(1, 3, 16, 8, 8), torch.tensor(500.0), embeds, **extra).shape == (1, 3, 16, 8, 8)
        with pytest.raises(UserError, match="learned positions for 3 latent frames of 8x8 only, got 2"):
            bb.predict(torch.zeros(1, 2, 16, 8, 8), torch.tensor(500.0), embeds, **extra)


def test_cogvideox_1_5_temporal_patches_generate_and_track():
    """patch_size_t=2 (CogVideoX 1.5): the sampler pads the latent frames to whole temporal patches and drops
    the padding before decoding, as the stock pipeline does; tracking gives every RGB frame a token frame of
    its own (each frame-as-latent repeated twice), where it failed with an IndexError before."""
    from difftrack.testing import tiny_backbone
    from difftrack.tracker import DiffTracker

    bb = tiny_backbone("cogvideox-1.5")
    assert bb.temporal_patch == 2 and [bb.latent_frame_padding(f) for f in (3, 4, 5)] == [1, 0, 1]
    assert (bb.max_frames, bb.frame_window) == (3, 2)  # 9 trained RGB frames: 3 latent frames, 2 token frames
    video = sample(bb, "a red disc", num_frames=9, height=32, width=32, num_steps=2, output="uint8", progress=False)
    assert video.shape == (9, 32, 32, 3)
    tracker = DiffTracker(bb, num_steps=2, steps=[1])
    tracks, visible = tracker(video, np.array([[0, 10.0, 10.0], [5, 20.0, 12.0]], np.float32))
    assert tracks.shape == (9, 2, 2) and visible.shape == (9, 2) and np.isfinite(tracks).all()
    assert np.allclose(tracks[0, 0], [10, 10], atol=0.5) and np.allclose(tracks[5, 1], [20, 12], atol=0.5)


def test_model_cpu_offload_hooks_every_model_and_changes_no_bit(tmp_path, monkeypatch):
    """Model CPU offload wired through accelerate's hooks (run here with the CPU as execution device, the
    only one this machine has): each model runs behind a hook, the one that runs offloads the others, the
    text encoder loaded later gets one too, and the video is bit-identical."""
    import difftrack
    from difftrack.testing import save_pipeline, tiny_components, tiny_pipeline_class

    save_pipeline(tiny_components("cogvideox-rope"), tiny_pipeline_class("cogvideox-rope"), tmp_path / "cog")
    plain = difftrack.create_backbone(str(tmp_path / "cog"))
    offloaded = difftrack.create_backbone(str(tmp_path / "cog"))
    offloaded.enable_model_cpu_offload("cpu")
    assert offloaded.device == torch.device("cpu")
    assert hasattr(offloaded.transformer, "_hf_hook") and hasattr(offloaded.vae, "_hf_hook")
    from accelerate.hooks import UserCpuOffloadHook

    offloads = []
    monkeypatch.setattr(UserCpuOffloadHook, "offload", lambda hook: offloads.append(hook.model))

    def generate(bb):
        return sample(bb, PROMPT, num_frames=9, height=32, width=32, num_steps=2, seed=3,
                      guidance=GuidanceConfig("cfg", 6.0), output="tensor", progress=False)

    video = generate(offloaded)
    assert hasattr(offloaded.text_encoder, "_hf_hook") and len(offloaded._offload_hooks) == 3
    assert {id(m) for m in offloads} == {id(offloaded.transformer), id(offloaded.vae), id(offloaded.text_encoder)}
    assert torch.equal(video, generate(plain))


def test_offload_needs_a_gpu(model_dir, tmp_path, capsys):
    code, lines = _cli(capsys, "--model", model_dir, "--prompt", PROMPT, "--offload", "--device", "cpu",
                       "--out", tmp_path / "v.mp4")
    assert code == 2 and len(lines) == 1 and "--offload" in lines[0] and "--device cuda" in lines[0]
    assert not list(tmp_path.iterdir())
