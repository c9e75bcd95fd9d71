"""Seconds a training step of the embedded model takes for each data source and pixels-per-token setting, against
the shipped v2 recipe measured the same way in the same process.

For every row: the clips of a few steps made on their own, in the share background workers prepare ahead (the
generator's clips; photo clips, rendered too on a CPU run, their scenes only on a GPU) and the share the training
loop finishes (on a GPU, photo clips rendered in one batched call), then optimiser steps on batches made
beforehand: medians of wall and CPU time, the rows taking turns step by step, so that other work on a shared
machine slows them alike. The loop's cost a step (``loop_s_per_step``) is the step plus the finishing share; the
workers' share runs beside it.
Everything runs at the process's torch threads (set OMP_NUM_THREADS=1 for the one-thread numbers).

    OMP_NUM_THREADS=1 nice python studies/train_step_times.py --no-bf16 --out results/embedded/step_times.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

# (name, train-tiny recipe options): v2 first, the reference of every ratio
ROWS = (
    ("v2: mix 64/4", []),
    ("mix 128/8", ["--size", "128", "--patch", "8"]),
    ("photos 64/4", ["--data", "photos"]),
    ("photos 128/8", ["--data", "photos", "--size", "128", "--patch", "8"]),
    ("photos 256/16", ["--data", "photos", "--size", "256", "--patch", "16"]),
    ("photos 128/8 masked-anchor", ["--data", "photos", "--size", "128", "--patch", "8", "--mask-patches", "0.75",
                                    "--anchor-clean", "0.5"]),
)


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def _synchronize(cfg) -> None:
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(call, cfg) -> tuple[float, float]:
    """(wall, CPU) seconds of one synchronised call."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    _synchronize(cfg)
    return time.perf_counter() - wall, time.process_time() - cpu


def time_rows(cfgs: list, clip_steps: int, untimed: int, timed: int) -> list[dict]:
    """Median wall and CPU seconds of each configuration's clips (the share background workers prepare, the share
    the training loop finishes) and of an optimiser step on a batch made beforehand. The rows take turns (round r
    times step r of every row), so that other work on a shared machine slows them alike; CPU seconds, which waiting
    does not count, are the steadier comparison there."""
    from difftrack.train import finish_batch, fresh_training, optimizer_step, prepared_clips, training_batch

    prepare, finish = [[] for _ in cfgs], [[] for _ in cfgs]
    for cfg in cfgs:
        training_batch(cfg, 0)  # the photographs loaded and resampled once, as a run does before its first step
    for step in range(clip_steps):
        for row, cfg in enumerate(cfgs):
            made = []
            prepare[row].append(_timed(lambda: made.append(prepared_clips(cfg, step)), cfg))
            finish[row].append(_timed(lambda: finish_batch(cfg, made[0]), cfg))
    runs = []
    for cfg in cfgs:
        components, params, optimizer, _ = fresh_training(cfg)
        batches = [training_batch(cfg, step) for step in range(untimed + timed)]
        for step in range(untimed):
            optimizer_step(cfg, components, params, optimizer, step, batches[step])
        runs.append((components, params, optimizer, batches))
    steps = [[] for _ in cfgs]
    for step in range(untimed, untimed + timed):
        for row, (cfg, (components, params, optimizer, batches)) in enumerate(zip(cfgs, runs)):
            steps[row].append(_timed(lambda: optimizer_step(cfg, components, params, optimizer, step,
                                                            batches[step]).item(), cfg))
    results = []
    for row in range(len(cfgs)):
        (prepare_wall, prepare_cpu), (finish_wall, finish_cpu) = np.median(prepare[row], 0), np.median(finish[row], 0)
        step_wall, step_cpu = np.median(steps[row], 0)
        results.append({"prepare_s_per_batch": round(prepare_wall, 4), "finish_s_per_batch": round(finish_wall, 4),
                        "step_s": round(step_wall, 4), "step_cpu_s": round(step_cpu, 4),
                        "loop_s_per_step": round(step_wall + finish_wall, 4),
                        "loop_cpu_s_per_step": round(step_cpu + finish_cpu, 4)})
    return results


def main(argv=None) -> int:
    from difftrack.errors import OneLineErrorParser, run_reporting_errors
    from difftrack.io import json_safe, write_json
    from difftrack.options import integer, output_file, positive
    from difftrack.train_options import add_recipe_arguments, recipe_config

    argv = sys.argv[1:] if argv is None else list(argv)
    p = OneLineErrorParser(prog="python studies/train_step_times.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip-steps", type=positive, default=5, help="batches made for the clips' times (default 5)")
    p.add_argument("--untimed-steps", type=integer(min=0), default=2, help="steps before the clock starts (default 2)")
    p.add_argument("--timed-steps", type=positive, default=6, help="steps timed a row (default 6)")
    p.add_argument("--rows", nargs="+", choices=[name for name, _ in ROWS], default=None, metavar="ROW",
                   help="rows to time (default all; v2 is always timed, first): " + "; ".join(n for n, _ in ROWS))
    p.add_argument("--out", type=output_file(".json"), default=None, help="the result as JSON")
    shared = p.add_argument_group("options every row shares (train-tiny's; a row's own options override them)")
    add_recipe_arguments(shared)

    def run(args) -> None:
        chosen = [row for row in ROWS if row is ROWS[0] or args.rows is None or row[0] in args.rows]
        result = {"command": "python studies/train_step_times.py " + " ".join(argv), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "cpu": _cpu_name(), "rows": []}
        cfgs = [recipe_config(p.parse_args(argv + options), out="", run_dir="")  # the row's options come last
                for _, options in chosen]
        for (name, options), times in zip(chosen, time_rows(cfgs, args.clip_steps, args.untimed_steps,
                                                            args.timed_steps)):
            row = {"name": name, "options": " ".join(options), **times}
            reference = result["rows"][0] if result["rows"] else row
            row["loop_vs_v2"] = round(row["loop_s_per_step"] / reference["loop_s_per_step"], 3)
            row["loop_cpu_vs_v2"] = round(row["loop_cpu_s_per_step"] / reference["loop_cpu_s_per_step"], 3)
            result["rows"].append(row)
            print(f"{name:27s} workers {row['prepare_s_per_batch']:.3f} s, loop {row['finish_s_per_batch']:.3f} s "
                  f"a batch; step {row['step_s']:.3f} s "
                  f"(CPU {row['step_cpu_s']:.3f} s)  loop {row['loop_s_per_step']:.3f} s/step: "
                  f"{row['loop_vs_v2']:.2f}x "
                  f"v2 (CPU {row['loop_cpu_vs_v2']:.2f}x)", flush=True)
        if args.out:
            write_json(args.out, json_safe(result))

    return run_reporting_errors(lambda a: run(p.parse_args(a)), argv, debug=False)


if __name__ == "__main__":
    sys.exit(main())
