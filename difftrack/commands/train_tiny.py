"""Train the embedded tiny video DiT (or its image twin) on procedural clips; resumes after a kill.

Rerunning the same command continues from the last checkpoint in --run-dir. Example (the shipped
video model): difftrack train-tiny --out difftrack/embedded/tiny-video --run-dir runs/tiny-video
"""

from __future__ import annotations

import json
import sys

from difftrack.options import number, output_dir, positive
from difftrack.train_options import add_recipe_arguments, recipe_config


def add_arguments(parser):
    parser.add_argument("--out", required=True, type=output_dir, help="directory for the final model (loadable with --model DIR)")
    parser.add_argument("--run-dir", required=True, type=output_dir, help="directory for checkpoints (resume from here)")
    parser.add_argument("--steps", type=positive, default=3000, help="optimiser steps (default 3000)")
    parser.add_argument("--checkpoint-minutes", type=number(min=0, min_inclusive=False), default=4.0,
                        help="minutes between checkpoints (default 4)")
    add_recipe_arguments(parser)


def _native_bfloat16() -> bool:
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


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
