import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from difftrack import train as train_module
from difftrack.backbones import create_backbone
from difftrack.cli import main
from difftrack.errors import UserError
from difftrack.train import TrainConfig, noise_levels, train

TINY = dict(size=16, layers=1, heads=2, head_dim=16, batch=1, frames=2, warmup=1, checkpoint_minutes=0.0)


@pytest.fixture
def forward_shapes(monkeypatch):
    """(batch, frames) of every transformer forward during the test."""
    from diffusers import CogVideoXTransformer3DModel

    shapes = []
    real_forward = CogVideoXTransformer3DModel.forward

    def spy(self, hidden_states, *args, **kwargs):
        shapes.append(tuple(hidden_states.shape[:2]))
        return real_forward(self, hidden_states, *args, **kwargs)

    monkeypatch.setattr(CogVideoXTransformer3DModel, "forward", spy)
    return shapes


def _weights(out):
    return load_file(out / "transformer" / "diffusion_pytorch_model.safetensors")


def test_two_steps_through_the_cli_give_a_loadable_model(tmp_path, capsys):
    code = main(["train-tiny", "--out", str(tmp_path / "m"), "--run-dir", str(tmp_path / "run"), "--steps", "2",
                 "--size", "16", "--layers", "1", "--heads", "2", "--head-dim", "16", "--batch", "1",
                 "--frames", "2", "--warmup", "1"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["final_loss"] > 0
    bb = create_backbone(str(tmp_path / "m"))
    assert bb.native_size == (16, 16) and bb.max_frames == 2 and bb.num_layers == 1
    assert (tmp_path / "run" / "checkpoint" / "optimizer.pt").is_file()


@pytest.mark.parametrize("native", [True, False])
def test_emulated_bfloat16_is_named_with_its_fix(tmp_path, capsys, monkeypatch, native):
    """On a CPU without native bf16 the default autocast is about 10x slower: one warning says so and names
    --no-bf16; with native bf16, or with --no-bf16, nothing is said."""
    from difftrack.commands import train_tiny

    monkeypatch.setattr(train_tiny, "_native_bfloat16", lambda: native)
    argv = ["train-tiny", "--out", str(tmp_path / "m"), "--run-dir", str(tmp_path / "run"), "--steps", "1",
            "--size", "16", "--layers", "1", "--heads", "2", "--head-dim", "16", "--batch", "1", "--frames", "2"]
    assert main(argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == (0 if native else 1) and (native or "--no-bf16" in warnings[0])
    assert main(argv[:4] + [str(tmp_path / "run32")] + argv[5:] + ["--no-bf16"]) == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    train(TrainConfig(out=str(tmp_path / "a"), run_dir=str(tmp_path / "ra"), steps=3, **TINY), progress=False)

    real = train_module.loss_for_step

    def killed_at_step_two(cfg, components, step, batch):
        if step == 2:
            raise KeyboardInterrupt
        return real(cfg, components, step, batch)

    monkeypatch.setattr(train_module, "loss_for_step", killed_at_step_two)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "b"), run_dir=str(tmp_path / "rb"), steps=3, **TINY), progress=False)
    monkeypatch.setattr(train_module, "loss_for_step", real)
    train(TrainConfig(out=str(tmp_path / "b"), run_dir=str(tmp_path / "rb"), steps=3, **TINY), progress=False)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    history = json.loads((tmp_path / "b" / "training.json").read_text())["history"]
    assert [h["step"] for h in history] == [1, 2, 3]


def test_more_render_workers_give_the_same_weights(tmp_path):
    """Batches are a pure function of the step and come back in step order whatever the number of workers."""
    for workers in (1, 2):
        train(TrainConfig(out=str(tmp_path / f"w{workers}"), run_dir=str(tmp_path / f"r{workers}"), steps=4,
                          workers=workers, **{**TINY, "batch": 2}), progress=False)
    a, b = _weights(tmp_path / "w1"), _weights(tmp_path / "w2")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_a_checkpoint_resumes_with_other_workers_and_device_options(tmp_path):
    """--device and --workers say where a run trains, not what it learns: changing them is no new run."""
    train(TrainConfig(out=str(tmp_path / "a"), run_dir=str(tmp_path / "r"), steps=1, **TINY), progress=False)
    train(TrainConfig(out=str(tmp_path / "a"), run_dir=str(tmp_path / "r"), steps=2, workers=2, device="cpu", **TINY),
          progress=False)
    history = json.loads((tmp_path / "a" / "training.json").read_text())["history"]
    assert [h["step"] for h in history] == [1, 2]


def test_resume_refuses_a_different_run(tmp_path):
    train(TrainConfig(out=str(tmp_path / "a"), run_dir=str(tmp_path / "r"), steps=1, **TINY), progress=False)
    with pytest.raises(UserError, match="different run"):
        train(TrainConfig(out=str(tmp_path / "a"), run_dir=str(tmp_path / "r"), steps=2, **{**TINY, "lr": 1e-3}),
              progress=False)


def test_image_twin_trains_every_frame_as_its_own_sample(tmp_path, forward_shapes):
    cfg = TrainConfig(out=str(tmp_path / "i"), run_dir=str(tmp_path / "ri"), steps=2, image_twin=True,
                      **{**TINY, "batch": 2, "frames": 3})
    train(cfg, progress=False)
    assert forward_shapes == [(6, 1), (6, 1)]
    assert type(create_backbone(str(tmp_path / "i"))).__name__ == "EmbeddedImageBackbone"


def test_noise_levels_sometimes_differ_per_frame_and_keep_a_nearly_clean_frame():
    g = torch.Generator().manual_seed(0)
    s, per_frame = noise_levels(g, 400, 8)
    assert ((per_frame >= 0) & (per_frame <= s[:, None] + 1e-6)).all()
    same = (per_frame == s[:, None]).all(1)
    assert 0.2 < same.float().mean() < 0.6
    assert 0.15 < (per_frame.min(1).values < 0.05).float().mean() < 0.45


def test_frame_subsets_are_sorted_deterministic_and_keep_their_rope_positions():
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    from difftrack.train import frame_subset, rotary_embedding

    cfg = TrainConfig(out="o", run_dir="r", frames=8, sample_frames=3)
    subsets = [frame_subset(cfg, step) for step in range(50)]
    assert all(len(s) == 3 and list(s) == sorted(set(s)) and s.max() < 8 for s in subsets)
    assert len({tuple(s) for s in subsets}) > 10  # gaps vary from step to step
    assert all((frame_subset(cfg, step) == s).all() for step, s in enumerate(subsets))
    cos, sin = rotary_embedding(cfg, 4, 16, np.array([1, 4, 6]))
    full_cos, full_sin = get_3d_rotary_pos_embed(16, ((0, 0), (4, 4)), (4, 4), 8)
    for frame_row, frame in enumerate([1, 4, 6]):
        torch.testing.assert_close(cos[frame_row * 16:(frame_row + 1) * 16], full_cos[frame * 16:(frame + 1) * 16])
        torch.testing.assert_close(sin[frame_row * 16:(frame_row + 1) * 16], full_sin[frame * 16:(frame + 1) * 16])
    assert (frame_subset(TrainConfig(out="o", run_dir="r", frames=3, sample_frames=4), 0) == [0, 1, 2]).all()


def test_the_video_model_trains_on_frame_subsets(tmp_path, forward_shapes):
    cfg = TrainConfig(out=str(tmp_path / "v"), run_dir=str(tmp_path / "rv"), steps=1,
                      **{**TINY, "batch": 2, "frames": 4, "sample_frames": 2})
    train(cfg, progress=False)
    assert forward_shapes == [(2, 2)]
    assert create_backbone(str(tmp_path / "v")).max_frames == 4  # inference keeps the whole clip window


def test_recipe_axes_change_only_what_they_name():
    from difftrack.data.synthetic import generate_clip
    from difftrack.train import frame_subset

    periodic = {"striped", "checkered", "brick"}
    for seed in range(12):
        clip = generate_clip(seed, num_frames=3, aperiodic=True)
        assert clip.wall not in periodic and not {s.texture for s in clip.sprites} & periodic

    base = noise_levels(torch.Generator().manual_seed(5), 64, 4)
    anchored = noise_levels(torch.Generator().manual_seed(5), 64, 4, anchor_clean=0.5)
    assert torch.equal(base[0], anchored[0])
    changed = (anchored[1] != base[1]).any(1)
    assert 16 < changed.sum() < 48 and (anchored[1][changed, 0] < 0.02).all()
    assert torch.equal(anchored[1][:, 1:], base[1][:, 1:])

    cfg = TrainConfig(out="o", run_dir="r", steps=100, frames=8, sample_frames=4, curriculum=0.5)
    for step in range(50):
        assert (np.diff(frame_subset(cfg, step)) == 1).all()
    assert any((np.diff(frame_subset(cfg, step)) > 1).any() for step in range(50, 100))


def test_mid_noise_weight_scales_the_loss_per_clip(tmp_path):
    from difftrack.backbones.embedded import build_components, model_config
    from difftrack.train import loss_for_step, training_batch

    cfg = TrainConfig(out="o", run_dir="r", steps=1, **TINY)
    components = build_components(model_config(layers=1, heads=2, head_dim=16, size=16, frames=2), seed=0)
    batch = training_batch(cfg, 0)
    uniform = loss_for_step(cfg, components, 0, batch)
    mid = loss_for_step(TrainConfig(out="o", run_dir="r", steps=1, loss_weight="mid", **TINY), components, 0, batch)
    g = torch.Generator().manual_seed(0)  # loss_for_step's generator at seed 0, step 0: caption dropout, then levels
    torch.rand(1, generator=g)
    s = noise_levels(g, 1, 2)[0]
    torch.testing.assert_close(mid, uniform * 4 * s[0] * (1 - s[0]))


def test_masked_patches_cover_whole_patches_in_about_half_the_clips():
    from difftrack.train import masked_patches

    mask = masked_patches(torch.Generator().manual_seed(3), (200, 4, 3, 16, 16), 4, 0.25)
    assert mask.shape == (200, 4, 1, 16, 16)
    patches = mask[:, :, 0].unflatten(2, (4, 4)).unflatten(4, (4, 4))  # (B, F, rows, 4, cols, 4)
    whole = patches.all(3).all(-1)
    assert torch.equal(whole, patches.any(3).any(-1))  # every patch all masked or all kept
    masked_clips = mask.flatten(1).any(1).float().mean()
    assert 0.35 < masked_clips < 0.65
    in_masked = whole[mask.flatten(1).any(1)].float().mean()
    assert 0.2 < in_masked < 0.3


def test_masked_patches_change_the_input_of_some_clips_and_leave_the_others_bit_identical(monkeypatch):
    from difftrack.backbones.embedded import build_components, model_config
    from difftrack.train import loss_for_step, training_batch

    components = build_components(model_config(layers=1, heads=2, head_dim=16, size=16, frames=2), seed=0)
    seen = []
    forward = components["transformer"].forward
    monkeypatch.setattr(components["transformer"], "forward",
                        lambda *a, **k: seen.append(k["hidden_states"].clone()) or forward(*a, **k))
    cfg = TrainConfig(out="o", run_dir="r", steps=1, **{**TINY, "batch": 8})
    batch = training_batch(cfg, 0)
    loss_for_step(cfg, components, 0, batch)
    loss_for_step(TrainConfig(out="o", run_dir="r", steps=1, mask_patches=0.5, **{**TINY, "batch": 8}),
                  components, 0, batch)
    plain, masked = seen
    differs = (plain != masked).flatten(1).any(1)
    assert 0 < differs.sum() < 8  # the noise of unmasked clips is bit-identical to the v2 recipe's
    assert torch.equal(plain[~differs], masked[~differs])


def test_the_step_profile_names_the_operators_of_a_step(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "profile.json"
    done = subprocess.run([sys.executable, "studies/train_step_profile.py", "--batch", "1", "--timed-steps", "1",
                           "--untimed-steps", "0", "--layers", "2", "--out", str(out)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["wall_s_per_step"] > 0 and result["cpu_s_per_step"] > 0
    ops = [row["op"] for row in result["top_self_cpu_per_step"]]
    assert any("attention" in op for op in ops), ops
