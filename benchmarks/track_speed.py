"""Tracking speed on the CPU, and the transformer work saved against the authors' release scheme.

Tracks a procedural 24-frame 256x256 clip with a 10x10 grid of frame-0 queries (100 points) and
reports frames per second, peak RSS, and counts of transformer forwards, transformer blocks run and
VAE decodes, next to what the release's scheme would run for the same chunks: classifier-free
guidance with two empty prompts (2 forwards a chunk), every block (no early exit), and a video
decode after every chunk.

    python benchmarks/track_speed.py --model tiny-video --out results/tracking/speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-video")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--grid", type=int, default=10)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up (median reported)")
    p.add_argument("--out", default="results/tracking/speed.json")
    args = p.parse_args(argv)

    from difftrack.commands.track import grid_queries
    from difftrack.data.synthetic import generate_clip
    from difftrack.io import write_json
    from difftrack.tracker import DiffTracker

    clip = generate_clip(args.seed, num_frames=args.frames, height=args.size, width=args.size)
    queries = grid_queries(args.grid, 0, args.size, args.size)
    tracker = DiffTracker(args.model)
    tracker(clip.video, queries)  # warm-up
    times = []
    for _ in range(args.repeats):
        tracker.stats.forwards = tracker.stats.layers_run = 0
        start = time.perf_counter()
        tracker(clip.video, queries)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    stats = tracker.stats
    bb = tracker.backbone
    chunks = len(stats.chunks)
    steps = len(tracker.config.steps)
    release = {"forwards": 2 * chunks * steps, "blocks_run": 2 * chunks * steps * bb.num_layers,
               "vae_decodes": chunks}
    ours = {"forwards": stats.forwards, "blocks_run": stats.layers_run, "vae_decodes": 0}
    result = {
        "model": bb.name, "frames": args.frames, "size": args.size, "queries": len(queries),
        "layers": tracker.config.layers, "steps": tracker.config.steps, "window": tracker.config.window,
        "chunks": chunks, "seconds": seconds, "frames_per_second": args.frames / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
        "ours": ours, "release_scheme": release,
        "saved": {k: 1 - ours[k] / release[k] if release[k] else 0.0 for k in ours},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
