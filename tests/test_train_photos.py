"""train-tiny's data axis (generator clips or photo clips) and pixels-per-token axis (size / patch), with stand-in
photographs; and a model trained at 128/8 going through the ordinary embedded path: create_backbone and tracking."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from difftrack import train as train_module
from difftrack.backbones import create_backbone
from difftrack.cli import main
from difftrack.data import photos as photos_module
from difftrack.data.photo_clips import PhotoScene
from difftrack.data.synthetic import generate_clip
from difftrack.io import write_video
from difftrack.train import TrainConfig, train, training_batch

SMALL = dict(layers=1, heads=2, head_dim=16, batch=1, frames=2, sample_frames=2, warmup=1, checkpoint_minutes=0.0,
             bf16=False)


def stand_in_photos():
    rng = np.random.default_rng(0)
    return {f"stand-in/{k}.png": (255 * rng.random((40 + 8 * k, 60, 3))).astype(np.uint8) for k in range(3)}


@pytest.fixture
def photos(monkeypatch):
    """Stand-in photographs for the train split; each test starts and ends with no bank loaded."""
    monkeypatch.setattr(photos_module, "load_photos", lambda split: stand_in_photos())
    train_module.training_photos.cache_clear()
    yield
    train_module.training_photos.cache_clear()


@pytest.fixture
def forward_inputs(monkeypatch):
    """The hidden_states shape of every transformer forward during the test."""
    from diffusers import CogVideoXTransformer3DModel

    shapes = []
    real_forward = CogVideoXTransformer3DModel.forward

    def spy(self, hidden_states, *args, **kwargs):
        shapes.append(tuple(hidden_states.shape))
        return real_forward(self, hidden_states, *args, **kwargs)

    monkeypatch.setattr(CogVideoXTransformer3DModel, "forward", spy)
    return shapes


@pytest.mark.parametrize("size, patch", [(64, 4), (128, 8)])
def test_photo_clips_train_at_each_pixels_per_token_on_the_same_token_grid(tmp_path, photos, forward_inputs,
                                                                         size, patch):
    out = tmp_path / "model"
    summary = train(TrainConfig(out=str(out), run_dir=str(tmp_path / "run"), steps=2, size=size, patch=patch,
                                data="photos", **SMALL), progress=False)
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    assert forward_inputs == [(1, 2, 3, size, size)] * 2
    config = json.loads((out / "transformer" / "config.json").read_text())
    assert (config["sample_height"], config["patch_size"]) == (size, patch)
    assert json.loads((out / "training.json").read_text())["config"]["data"] == "photos"


def test_photo_batches_are_a_pure_function_of_the_step_and_resume_bit_exactly(tmp_path, photos, monkeypatch):
    cfg = TrainConfig(out="o", run_dir="r", size=32, patch=8, data="photos", batch=3, frames=4, sample_frames=2)
    video, captions, frames = training_batch(cfg, 5)
    again = training_batch(cfg, 5)
    assert video.shape == (3, 2, 3, 32, 32) and torch.equal(video, again[0]) and captions == again[1]
    assert all("photographic" in caption for caption in captions)
    assert video.min() >= -1 and video.max() <= 1 and not torch.equal(video, training_batch(cfg, 6)[0])

    real = train_module.loss_for_step

    def run(name, kill_at=None):
        def killed(cfg, components, step, batch):
            if step == kill_at:
                raise KeyboardInterrupt
            return real(cfg, components, step, batch)

        monkeypatch.setattr(train_module, "loss_for_step", killed)
        train(TrainConfig(out=str(tmp_path / name), run_dir=str(tmp_path / f"{name}-run"), steps=3, size=32, patch=8,
                          data="photos", **SMALL), progress=False)

    run("a")
    with pytest.raises(KeyboardInterrupt):
        run("b", kill_at=2)
    run("b")
    a, b = (load_file(tmp_path / name / "transformer" / "diffusion_pytorch_model.safetensors") for name in "ab")
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_on_a_gpu_the_workers_draw_scenes_and_the_device_renders_the_same_clips(photos):
    """The GPU run's division of labour, checked on the CPU: scenes drawn ahead, rendered where the model trains,
    give the very batch a CPU run's workers make."""
    cpu = TrainConfig(out="o", run_dir="r", size=32, patch=8, data="photos", batch=3, frames=4, sample_frames=2)
    gpu = dataclasses.replace(cpu, device="cuda")
    # handed over as the DataLoader hands a worker's item to the training process
    scenes, frames = torch.utils.data.default_convert(train_module.prepared_clips(gpu, 7))
    assert len(scenes) == 3 and all(isinstance(scene, PhotoScene) for scene in scenes)
    video, captions, _ = train_module.rendered_batch(gpu, scenes, frames, "cpu")
    expected = training_batch(cpu, 7)
    assert torch.equal(video, expected[0]) and captions == expected[1] and np.array_equal(frames, expected[2])
    assert train_module.finish_batch(cpu, expected) is expected


def test_the_data_and_patch_of_a_checkpoint_are_part_of_its_run(tmp_path, photos):
    train(TrainConfig(out=str(tmp_path / "m"), run_dir=str(tmp_path / "r"), steps=1, size=32, patch=8, data="photos",
                      **SMALL), progress=False)
    for change in ({"data": "mix"}, {"patch": 4}):
        with pytest.raises(Exception, match="different run"):
            train(TrainConfig(out=str(tmp_path / "m"), run_dir=str(tmp_path / "r"), steps=2,
                              **{**dict(size=32, patch=8, data="photos"), **change}, **SMALL), progress=False)


@pytest.mark.parametrize("argv, message", [
    (["--data", "photos", "--aperiodic"], "--aperiodic"),
    (["--size", "64", "--patch", "5"], "--size 64 is not a multiple of --patch 5"),
    (["--patch", "0"], "--patch: must be an integer >= 1"),
    (["--data", "pictures"], "--data"),
])
def test_bad_axes_are_one_line_errors(tmp_path, capsys, argv, message):
    code = main(["train-tiny", "--out", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r"), "--steps", "1", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "r").exists()


def test_photographs_that_cannot_be_fetched_stop_training_in_one_line(tmp_path, capsys, monkeypatch):
    """A train split with a Debian package on a machine without apt-get: one line saying why and how to fix it,
    before any run directory is made."""
    corpus = photos_module.load_corpus()
    corpus["packages"]["gnome-backgrounds"]["files"] = [{"path": "usr/share/backgrounds/x.jpg", "sha256": "0" * 64,
                                                        "size": 1}]
    monkeypatch.setattr(photos_module, "load_corpus", lambda: corpus)
    monkeypatch.setenv("DIFFTRACK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    train_module.training_photos.cache_clear()
    code = main(["train-tiny", "--out", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r"), "--steps", "1",
                 "--data", "photos", "--no-bf16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: cannot fetch the photo corpus: apt-get is not installed") and "copy" in err[0]
    assert not (tmp_path / "r").exists()


def test_a_model_trained_at_128_8_loads_and_tracks_at_its_own_size(tmp_path, photos, forward_inputs, capsys):
    model = tmp_path / "model"
    assert main(["train-tiny", "--out", str(model), "--run-dir", str(tmp_path / "run"), "--steps", "1", "--size",
                 "128", "--patch", "8", "--data", "photos", "--layers", "2", "--heads", "2", "--head-dim", "16",
                 "--batch", "1", "--frames", "3", "--sample-frames", "2", "--no-bf16"]) == 0
    backbone = create_backbone(str(model))
    assert backbone.native_size == (128, 128) and backbone.patch_size == 8 and backbone.max_frames == 3
    latents = backbone.encode_frames(np.zeros((3, 48, 80, 3), np.uint8))
    assert latents.shape == (1, 3, 3, 128, 128)
    geometry = backbone.geometry(latents, backbone.text_tokens, frame_size=(48, 80))
    assert (geometry.grid_h, geometry.grid_w) == (16, 16) and geometry.stride_px == (3.0, 5.0)

    clip = generate_clip(3, num_frames=3, height=64, width=64)
    video = tmp_path / "clip.mp4"
    write_video(video, clip.video)
    forward_inputs.clear()
    out = tmp_path / "tracks"
    assert main(["track", str(video), "--model", str(model), "--grid", "2", "--num-steps", "10", "--steps", "9",
                 "--no-video", "--out", str(out)]) == 0
    assert forward_inputs and all(shape[-2:] == (128, 128) for shape in forward_inputs)
    tracks = np.load(out.with_suffix(".npz"))["tracks"]
    assert tracks.shape == (3, 4, 2) and np.isfinite(tracks).all()


def test_the_step_time_study_times_v2_and_the_rows_asked_for(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "times.json"
    done = subprocess.run([sys.executable, "studies/train_step_times.py", "--rows", "photos 64/4", "--layers", "1",
                           "--heads", "2", "--head-dim", "16", "--batch", "1", "--frames", "2", "--sample-frames", "2",
                           "--no-bf16", "--clip-steps", "1", "--untimed-steps", "0", "--timed-steps", "1",
                           "--out", str(out)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [row["name"] for row in result["rows"]] == ["v2: mix 64/4", "photos 64/4"]
    assert result["command"].startswith("python studies/train_step_times.py --rows")
    photos = result["rows"][1]
    assert photos["loop_s_per_step"] == pytest.approx(photos["step_s"] + photos["finish_s_per_batch"], abs=2e-4)
    # On a CPU run the workers finish both kinds of clips, beside the step
    assert all(row["finish_s_per_batch"] < 1e-3 < row["prepare_s_per_batch"] for row in result["rows"])
