"""Figures for the embedded models' card: the loss curves and a strip of generated frames.

    python studies/embedded_card.py --out difftrack/embedded

Reads difftrack/embedded/<model>/training.json (written by `difftrack train-tiny`) and samples the
video model (and, on a second block of rows, the image twin) with difftrack.sampling.sample.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from difftrack.io import atomic_path

PROMPTS = ("a striped disc moves left over a brick wall",
           "a photographic square moves right over a speckled wall",
           "a checkered triangle moves up over a photographic wall",
           "a speckled diamond moves down over a striped wall")


def loss_curves(models: dict[str, Path], out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finals = {}
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for name, path in models.items():
        history = json.loads((path / "training.json").read_text())["history"]
        steps = np.array([h["step"] for h in history])
        loss = np.array([h["loss"] for h in history])
        window = min(50, len(loss))
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps, loss, alpha=0.15, lw=0.5)
        ax.plot(steps[window - 1:], smooth, label=f"{name} ({window}-step mean)", color=ax.lines[-1].get_color())
        finals[name] = float(loss[-100:].mean())
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("rectified-flow MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return finals


def sample_strip(model_names: list[str], out: Path, frames: int, steps: int, guidance_scale: float, seed: int) -> None:
    import cv2

    from difftrack.backbones import create_backbone
    from difftrack.sampling import sample

    rows = []
    for name in model_names:
        bb = create_backbone(name)
        h, w = bb.native_size
        videos = sample(bb, list(PROMPTS), frames, h, w, num_steps=steps, seed=seed, guidance_scale=guidance_scale,
                        output="uint8")
        rows += [np.concatenate(list(video), axis=1) for video in videos]
        rows.append(np.full((6, rows[-1].shape[1], 3), 255, np.uint8))  # gap between models
    strip = np.concatenate(rows[:-1], axis=0)
    with atomic_path(out, suffix=".png") as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="difftrack/embedded")
    p.add_argument("--models", nargs="+", default=["tiny-video", "tiny-image"])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance-scale", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    # A model is a registry name (its training.json under --out) or a model directory.
    finals = loss_curves({Path(m).name: Path(m) if Path(m).is_dir() else out / m for m in args.models},
                         out / "loss_curve.png")
    sample_strip(args.models, out / "samples.png", args.frames, args.steps, args.guidance_scale, args.seed)
    print(json.dumps({"final_loss_last100": finals, "prompts": PROMPTS}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
