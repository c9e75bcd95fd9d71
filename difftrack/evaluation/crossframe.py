"""Does a video model use its cross-frame attention? Two diagnostics against its image twin.

1. The training-loss gap at equal steps: the video model's and its twin's mean training loss over blocks
   of steps (or over the last quarter of the steps), from each model's ``training.json`` history; a video
   model below its twin profits from seeing other frames.
2. The denoising loss (flow target noise - x0, the training objective) with the stock attention and with
   every layer's cross-frame attention removed (:class:`difftrack.guidance.CrossFrameAttentionRemoval`:
   each video token sees only the text and its own frame); the relative increase says how much the model
   relies on other frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

REMOVAL_NOISE_LEVELS = (0.2, 0.5, 0.8)


def training_losses(model_dir: str | Path) -> list[float]:
    """The loss of every optimiser step, from the ``training.json`` that `difftrack train-tiny` writes."""
    return [h["loss"] for h in json.loads((Path(model_dir) / "training.json").read_text())["history"]]


def loss_blocks(losses: list[float], block: int) -> dict[int, float]:
    """Mean loss over each whole block of ``block`` steps, keyed by the step that ends the block."""
    losses = np.array(losses)
    return {int((i + 1) * block): float(losses[i * block:(i + 1) * block].mean()) for i in range(len(losses) // block)}


def last_quarter_loss(losses: list[float]) -> float:
    """Mean loss over the last quarter of the steps (at least the last one)."""
    return float(np.mean(losses[-max(1, len(losses) // 4):]))


@torch.no_grad()
def removal_losses(model: str, clips: dict, seed: int = 0, noise_levels=REMOVAL_NOISE_LEVELS) -> dict:
    """Denoising loss of ``model`` on ``clips`` (as :func:`difftrack.data.clips.make_clips` makes them), clip c
    noised with the noise of seed ``seed + c``, per noise level: {s: {"stock", "cross_frame_removed",
    "relative_increase"}} with string keys."""
    from difftrack.backbones import create_backbone
    from difftrack.guidance import CrossFrameAttentionRemoval

    bb = create_backbone(model)
    embeds = bb.encode_prompt([""])
    out = {}
    for s in noise_levels:
        stock, removed = [], []
        for c in range(len(clips["seeds"])):
            x0 = bb.encode_video(torch.from_numpy(clips["video"][c]).permute(0, 3, 1, 2).float()[None] / 127.5 - 1)
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + c))
            noisy = (1 - s) * x0 + s * noise
            target = noise - x0
            t = torch.tensor(s * 1000.0)
            stock.append(torch.nn.functional.mse_loss(bb.predict(noisy, t, embeds).float(), target).item())
            with CrossFrameAttentionRemoval(bb, range(bb.num_layers)) as removal:
                removal.state.perturbed_from = 0
                removal.state.tokens_per_frame = removal.tokens_per_frame(noisy)
                removed.append(torch.nn.functional.mse_loss(bb.predict(noisy, t, embeds).float(), target).item())
        out[f"{s}"] = {"stock": float(np.mean(stock)), "cross_frame_removed": float(np.mean(removed)),
                       "relative_increase": float(np.mean(removed) / np.mean(stock) - 1)}
    return out
