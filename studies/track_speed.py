"""Tracking cost against video length and against the number of distinct query frames.

For T in --lengths (default 12, 24, 48, 96 frames) of a procedural 256x256 clip and 100 queries spread
over 1, 4 or all frames, runs the tracker once and records transformer forwards, blocks run, CPU and
wall seconds, frames per second and peak RSS, next to the forwards the authors' release scheme would
run (one set of chunk forwards per query frame, classifier-free guidance with two empty prompts, every
block). Forwards should grow linearly in T and not at all with the query frames.

    python studies/track_speed.py --model tiny-video --out results/tracking/speed.json

Writes the JSON and, beside it, speed.png (forwards and CPU seconds against T).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

QUERY_SETTINGS = ("1", "4", "all")


def spread_queries(num_frames: int, setting: str, points: int, size: int, seed: int) -> np.ndarray:
    """``points`` queries on 1, 4 or all frames, round robin, at random pixels."""
    frames = {"1": [0], "4": np.linspace(0, num_frames - 1, 4).round().astype(int).tolist(),
              "all": list(range(num_frames))}[setting]
    rng = np.random.default_rng(seed)
    t = np.array([frames[i % len(frames)] for i in range(points)], np.float32)
    xy = rng.uniform(0.5, size - 0.5, (points, 2)).astype(np.float32)
    return np.concatenate([t[:, None], xy], 1)


def main(argv=None):
    from difftrack.options import add_device_arguments, integer, output_file, positive, seed

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-video")
    add_device_arguments(p)
    p.add_argument("--lengths", nargs="+", type=integer(min=2), default=[12, 24, 48, 96])
    p.add_argument("--size", type=integer(min=16), default=256)
    p.add_argument("--points", type=positive, default=100)
    p.add_argument("--seed", type=seed, default=1000)
    p.add_argument("--out", type=output_file(".json", new_parent=True), default="results/tracking/speed.json")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from difftrack.data.synthetic import generate_clip
    from difftrack.io import atomic_path, write_json
    from difftrack.tracker import DiffTracker, frame_windows

    tracker = DiffTracker(args.model, device=args.device, dtype=args.dtype)
    bb, cfg = tracker.backbone, tracker.config
    clip = generate_clip(args.seed, num_frames=max(args.lengths), height=args.size, width=args.size)
    tracker(clip.video[:2], spread_queries(2, "1", 4, args.size, 0))  # warm-up: thread pools, lazy imports
    runs = []
    for num_frames in args.lengths:
        for setting in QUERY_SETTINGS:
            queries = spread_queries(num_frames, setting, args.points, args.size, args.seed)
            tracker.stats.forwards = tracker.stats.layers_run = 0
            load = os.getloadavg()[0]
            cpu, wall = time.process_time(), time.perf_counter()
            tracker(clip.video[:num_frames], queries)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            anchors = len(set(queries[:, 0].tolist()))
            chunks = max(1, math.ceil((num_frames - 1) / (cfg.window - 1)))
            runs.append({"frames": num_frames, "query_frames": setting, "distinct_query_frames": anchors,
                         "windows": len(frame_windows(num_frames, cfg.window)), "forwards": tracker.stats.forwards,
                         "blocks_run": tracker.stats.layers_run, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
                         "frames_per_second": round(num_frames / wall, 2), "loadavg_before": round(load, 2),
                         "release_scheme_forwards": 2 * anchors * chunks * len(cfg.steps),
                         "release_scheme_blocks": 2 * anchors * chunks * len(cfg.steps) * bb.num_layers})
            print(runs[-1], flush=True)
    result = {"command": " ".join(["python", "studies/track_speed.py", *sys.argv[1:]]), "model": bb.name,
              "size": args.size, "points": args.points, "window": cfg.window, "layers": cfg.layers,
              "steps": cfg.steps, "temporal": cfg.temporal, "torch_threads": torch.get_num_threads(),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for setting in QUERY_SETTINGS:
        rows = [r for r in runs if r["query_frames"] == setting]
        t = [r["frames"] for r in rows]
        axes[0].plot(t, [r["forwards"] for r in rows], "o-", label=f"difftrack, queries on {setting} frame(s)")
        axes[0].plot(t, [r["release_scheme_forwards"] for r in rows], "x--", alpha=0.6,
                     label=f"release scheme, {setting}")
        axes[1].plot(t, [r["cpu_s"] for r in rows], "o-", label=f"queries on {setting} frame(s)")
    axes[0].set(xlabel="video frames T", ylabel="transformer forwards", yscale="log", title="forwards")
    axes[1].set(xlabel="video frames T", ylabel="CPU seconds", title=f"CPU time ({args.points} queries)")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out.with_name("speed.png")) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    print(f"wrote {out} and {out.with_name('speed.png')}")


if __name__ == "__main__":
    sys.exit(main())
