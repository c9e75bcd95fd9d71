"""Train the embedded tiny video DiT (or its image twin) on procedural clips; resumes after a kill.

Rerunning the same command continues from the last checkpoint in --run-dir. Example (the shipped
video model): difftrack train-tiny --out difftrack/embedded/tiny-video --run-dir runs/tiny-video
"""

from __future__ import annotations

import json
import sys

from difftrack.options import integer, number, output_dir, positive, seed, torch_device
from difftrack.train import LOSS_WEIGHTS


def add_arguments(parser):
    parser.add_argument("--out", required=True, type=output_dir, help="directory for the final model (loadable with --model DIR)")
    parser.add_argument("--run-dir", required=True, type=output_dir, help="directory for checkpoints (resume from here)")
    parser.add_argument("--steps", type=positive, default=3000, help="optimiser steps (default 3000)")
    parser.add_argument("--checkpoint-minutes", type=number(min=0, min_inclusive=False), default=4.0,
                        help="minutes between checkpoints (default 4)")
    add_recipe_arguments(parser)


def add_recipe_arguments(parser):
    """Everything that says what and where a run trains, but not for how long or where it writes (shared with
    benchmarks/train_step_profile.py)."""
    parser.add_argument("--batch", type=positive, default=4, help="clips per step (default 4)")
    parser.add_argument("--frames", type=positive, default=8,
                        help="frames per clip: the model's temporal window (RoPE positions) at inference")
    parser.add_argument("--sample-frames", type=positive, default=4,
                        help="frames of each clip trained on per step, a random sorted subset at their own "
                             "temporal positions (attention cost grows with its square)")
    parser.add_argument("--image-twin", action="store_true",
                        help="train the image twin: every frame of every clip is its own one-frame sample")
    parser.add_argument("--layers", type=positive, default=6, help="transformer blocks (default 6)")
    parser.add_argument("--heads", type=positive, default=4, help="attention heads (default 4)")
    parser.add_argument("--head-dim", type=integer(min=2), default=32, help="channels per head, even (default 32)")
    parser.add_argument("--size", type=integer(min=4), default=64, help="frame side in pixels, a multiple of 4 (default 64)")
    parser.add_argument("--lr", type=number(min=0, min_inclusive=False), default=8e-4, help="peak learning rate (default 8e-4)")
    parser.add_argument("--warmup", type=integer(min=0), default=200, help="linear warm-up steps (default 200)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of weights, clips and noise (default 0)")
    parser.add_argument("--no-bf16", action="store_true", help="train in fp32 instead of bf16 autocast")
    parser.add_argument("--device", default="cpu",
                        help="where the model trains: cpu (default) or cuda[:N]; a checkpoint resumes on either. "
                             "Clips are rendered and noise drawn on the CPU, so the data are the same everywhere")
    parser.add_argument("--workers", type=positive, default=1,
                        help="processes rendering clips ahead (default 1; on a GPU one per spare core keeps it fed)")
    recipe = parser.add_argument_group("recipe axes (defaults: the shipped v2 recipe)")
    recipe.add_argument("--aperiodic", action="store_true",
                        help="walls and sprite textures only speckled or photographic (no stripes, checkers, bricks)")
    recipe.add_argument("--anchor-clean", type=number(min=0, max=1), default=0.0, metavar="FRACTION",
                        help="fraction of clips whose first trained frame is kept nearly clean (s < 0.02), as in "
                             "image-to-video training (default 0)")
    recipe.add_argument("--loss-weight", choices=LOSS_WEIGHTS, default="uniform",
                        help="per-clip loss weight: uniform, or mid = 4 s (1 - s), favouring mid noise (default uniform)")
    recipe.add_argument("--curriculum", type=number(min=0, max=1), default=0.0, metavar="FRACTION",
                        help="fraction of the steps, the first, trained on consecutive frames only (small frame "
                             "gaps first; default 0)")
    recipe.add_argument("--mask-patches", type=number(min=0, max=0.9), default=0.0,
                        metavar="FRACTION",
                        help="in half the clips, replace this fraction of every frame's patches by pure noise, so "
                             "that restoring them pays only by copying from another frame (default 0)")


def _native_bfloat16() -> bool:
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def recipe_config(args, **run):
    """The TrainConfig of parsed recipe arguments plus ``run`` (out, run_dir, steps, checkpoint_minutes), checked."""
    from difftrack.train import TrainConfig, check_config

    cfg = TrainConfig(**run, batch=args.batch, frames=args.frames, sample_frames=args.sample_frames,
                      image_twin=args.image_twin, layers=args.layers, heads=args.heads, head_dim=args.head_dim,
                      size=args.size, lr=args.lr, warmup=args.warmup, seed=args.seed, bf16=not args.no_bf16,
                      aperiodic=args.aperiodic, anchor_clean=args.anchor_clean, loss_weight=args.loss_weight,
                      curriculum=args.curriculum, mask_patches=args.mask_patches,
                      device=str(torch_device(args.device)), workers=args.workers)
    check_config(cfg)
    return cfg


def run(args):
    from difftrack.train import train

    cfg = recipe_config(args, out=args.out, run_dir=args.run_dir, steps=args.steps,
                        checkpoint_minutes=args.checkpoint_minutes)
    if cfg.bf16 and cfg.device == "cpu" and not _native_bfloat16():
        print("warning: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so bf16 autocast is emulated and about "
              "10x slower (measured on an AVX2 machine: 25-30 s against 2.9 s a step in fp32); pass --no-bf16",
              file=sys.stderr)
    summary = train(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
