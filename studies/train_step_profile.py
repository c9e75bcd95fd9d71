"""Where a training step of the embedded model goes: wall time a step and the operators that take it.

The batches are rendered before the clock starts (rendering runs in worker processes during training and is
measured apart), then --untimed-steps steps run, then --timed-steps steps under torch.profiler: the operators
by self CPU time and, on a GPU, by self device time, next to the wall time a step. The 2026-12-04 GPU lease
ran 0.3-0.4 s a step at batch 32 on an H200 whatever the number of render workers; this says why.

    python studies/train_step_profile.py --device cuda --batch 32 --sample-frames 8 --out runs/step_profile.json
    python studies/train_step_profile.py --timed-steps 3     # the shipped CPU recipe
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch


def profile_steps(cfg, warmup: int, steps: int, rows: int = 15) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from difftrack.train import fresh_training, optimizer_step, training_batch

    components, params, optimizer, _ = fresh_training(cfg)
    batches = [training_batch(cfg, step) for step in range(warmup + steps)]
    cuda = cfg.device.startswith("cuda")

    def run(first: int, count: int) -> None:
        for step in range(first, first + count):
            optimizer_step(cfg, components, params, optimizer, step, batches[step]).item()
        if cuda:
            torch.cuda.synchronize()

    run(0, warmup)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start, cpu_start = time.perf_counter(), time.process_time()
        run(warmup, steps)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    events = prof.key_averages()

    def top(attribute: str) -> list[dict]:
        ranked = sorted(events, key=lambda e: getattr(e, attribute, 0), reverse=True)[:rows]
        return [{"op": e.key, "calls": e.count, "self_ms": round(getattr(e, attribute, 0) / 1000 / steps, 3)}
                for e in ranked if getattr(e, attribute, 0) > 0]

    out = {"wall_s_per_step": wall / steps, "cpu_s_per_step": cpu / steps, "load_average": os.getloadavg(),
           "torch_threads": torch.get_num_threads(), "top_self_cpu_per_step": top("self_cpu_time_total")}
    if cuda:
        out["device_name"] = torch.cuda.get_device_name()
        out["top_self_device_per_step"] = top("self_device_time_total")
    return out


def main(argv=None) -> int:
    from difftrack.errors import OneLineErrorParser, run_reporting_errors
    from difftrack.io import json_safe, write_json
    from difftrack.options import integer, output_file, positive
    from difftrack.train_options import add_recipe_arguments, recipe_config

    p = OneLineErrorParser(prog="python studies/train_step_profile.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--untimed-steps", type=integer(min=0), default=3, help="steps before the clock starts (default 3)")
    p.add_argument("--timed-steps", type=positive, default=10, help="steps under the profiler (default 10)")
    p.add_argument("--out", type=output_file(".json"), default=None, help="the result as JSON")
    recipe = p.add_argument_group("the run profiled: train-tiny's options")
    add_recipe_arguments(recipe)

    def run(args) -> None:
        cfg = recipe_config(args, out="", run_dir="")
        result = {"command": "python studies/train_step_profile.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  **profile_steps(cfg, args.untimed_steps, args.timed_steps)}
        print(f"{result['wall_s_per_step']:.3f} s a step (CPU {result['cpu_s_per_step']:.3f} s)")
        for key in ("top_self_device_per_step", "top_self_cpu_per_step"):
            for row in result.get(key, [])[:8]:
                print(f"  {key.split('_')[2]:6s} {row['self_ms']:9.3f} ms  {row['calls']:6d}  {row['op']}")
        if args.out:
            write_json(args.out, json_safe(result))

    # Parsed inside, so that a bad option is one `error:` line and exit 2 like every other error.
    return run_reporting_errors(lambda a: run(p.parse_args(a)), argv, debug=False)


if __name__ == "__main__":
    sys.exit(main())
