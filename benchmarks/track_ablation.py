"""Tracker ablation on TAP-Vid-format clips: per-frame argmax -> + temporal -> + ensembles -> + sub-token.

Each row adds one part of the tracker to the row above it, on the same clips, queries and metrics as
benchmarks/tapvid.py (tapnet's definitions), next to zero motion and Lucas-Kanade:

    per-frame argmax             the first tracker's scheme: per-frame argmax, soft-argmax in a 3x3-token window
    + temporal                   the Viterbi pass over each frame's candidates (motion prior, occluded state)
    + ensembles                  costs averaged over --draws noise draws and the model's recommended layers
    + dominant motion            the motion prior's second component: the scene's dominant motion (a camera pan),
                                 estimated from the costs of all the frame's tokens
    + sub-token offset           the point keeps its own place inside the matched token instead of the soft-argmax
    temporal + offset (no dominant motion)   the default before the dominant motion, for comparison
    dominant motion alone        every point moves with the dominant motion (no per-point matching): a baseline
    default (temporal + dominant motion + offset)   what `difftrack track` does; no ensembles

    python benchmarks/make_tapvid_fixture.py --out runs/heldout12/tapvid_davis.pkl --num-videos 20 \\
        --seed-offset 200000 --frames 12 --size 256 --points 32
    python benchmarks/track_ablation.py --root runs/heldout12 --mode first --out results/tracking/ablation_first

Writes OUT/ablation.json ({row: {metric: value}}, with the options of each row, CPU and wall seconds
and the load average) and OUT/ablation.md (the table x100). Besides tapnet's metrics, moved_1tok: over
ground-truth-visible (query, frame) pairs whose true position is more than one token (--moved-px) from
the query point in x or in y, the share predicted within one token in x and in y (the moved points of
difftrack.evaluation.queries, as benchmarks/embedded_eval.py counts them, in pixels).
Options given with --set apply to every difftrack row (e.g. --set motion_sigma=2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from difftrack.data.tapvid import DATASETS, TapVidReader
from difftrack.decoding import MotionModel
from difftrack.errors import OneLineErrorParser, UserError, run_reporting_errors
from difftrack.evaluation.metrics import QUERY_MODES, SUMMARY_COLUMNS
from difftrack.evaluation.scoring import protocol_video, score_tracker
from difftrack.io import atomic_path, write_json
from difftrack.options import add_device_arguments, number, output_dir, positive


COLUMNS = SUMMARY_COLUMNS[:8] + (("moved_1tok", "moved_within_1_token"),)
DEFAULT_ROW = "default (temporal + dominant motion + offset)"


def rows(recommended_layers: list[int], draws: int) -> dict[str, dict]:
    today = {"temporal": "none", "refine_window": 1, "background_weight": 0.0}
    temporal = dict(today, temporal="viterbi")
    dominant = dict(temporal, background_weight=MotionModel.background_weight)
    ensembles = dict(dominant, noise_draws=draws, layers=recommended_layers)
    return {"per-frame argmax": today, "+ temporal": temporal, "+ dominant motion": dominant,
            "+ ensembles": ensembles, "+ sub-token offset": dict(ensembles, refine_window=0),
            "temporal + offset (no dominant motion)": dict(temporal, refine_window=0),
            "dominant motion alone": dict(temporal, refine_window=0, background_weight=1.0),
            DEFAULT_ROW: dict(dominant, refine_window=0)}


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if not value:
            raise UserError(f"--set takes NAME=VALUE, got {item!r}")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def parse_args(argv):
    p = OneLineErrorParser(prog="python benchmarks/track_ablation.py", description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="TAP-Vid pickle or its directory (davis layout)")
    p.add_argument("--dataset", default="davis", choices=DATASETS)
    p.add_argument("--mode", default="first", choices=QUERY_MODES)
    p.add_argument("--model", default="tiny-video")
    add_device_arguments(p)
    p.add_argument("--draws", type=positive, default=4, help="noise draws of the ensemble rows (default 4)")
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="tracker options for every row")
    p.add_argument("--rows", nargs="+", default=None, choices=list(rows([], 1)), metavar="ROW",
                   help="only these rows (names as in the table)")
    p.add_argument("--no-baselines", action="store_true", help="skip zero motion and Lucas-Kanade")
    p.add_argument("--moved-px", type=number(min=0, min_inclusive=False), default=16.0,
                   help="one token in pixels, for the moved-point accuracy (default 16: tiny-video at 256x256)")
    p.add_argument("--limit", type=positive, default=None)
    p.add_argument("--out", required=True, type=output_dir)
    return p.parse_args(argv)


def run(args) -> None:
    from difftrack.backbones import create_backbone
    from difftrack.baselines import BASELINES
    from difftrack.tracker import DiffTracker

    reader = TapVidReader(args.dataset, args.root)
    backbone = create_backbone(args.model, device=args.device, dtype=args.dtype)
    extra = parse_set(args.set)
    try:
        recommended = backbone.recommendation()[0]
    except UserError:
        recommended = backbone.track_layers()
    trackers = {name: DiffTracker(backbone, **dict(options, **extra))
                for name, options in rows(recommended, args.draws).items() if not args.rows or name in args.rows}
    if not args.no_baselines:
        trackers.update(BASELINES)
    videos = [protocol_video(name, load()) for name, load in list(reader.entries())[:args.limit]]
    results, seconds = {}, {}
    for name, tracker in trackers.items():
        load_before, cpu, wall = os.getloadavg()[0], time.process_time(), time.perf_counter()
        score = score_tracker(tracker, videos, args.mode, moved_distance=args.moved_px)
        results[name] = dict(score.metrics, moved_within_1_token=score.moved_within)
        seconds[name] = {"cpu_s": round(time.process_time() - cpu, 2), "wall_s": round(time.perf_counter() - wall, 2),
                         "loadavg_before": round(load_before, 2), "loadavg_after": round(os.getloadavg()[0], 2)}
        print(f"{name:18s} AJ {100 * results[name]['average_jaccard']:.1f} "
              f"delta_avg {100 * results[name]['average_pts_within_thresh']:.1f} "
              f"OA {100 * results[name]['occlusion_accuracy']:.1f} "
              f"moved {100 * results[name]['moved_within_1_token']:.1f}  ({seconds[name]['cpu_s']} CPU-s)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = {name: tracker.meta() for name, tracker in trackers.items() if isinstance(tracker, DiffTracker)}
    write_json(out / "ablation.json", {
        "command": " ".join(["python", "benchmarks/track_ablation.py", *sys.argv[1:]]),
        "model": backbone.name, "mode": args.mode, "videos": [video.name for video in videos],
        "results": {n: {m: (None if np.isnan(v) else v) for m, v in r.items()} for n, r in results.items()},
        "options": {n: {k: v for k, v in o.items() if k not in ("forwards", "layers_run")} for n, o in options.items()},
        "seconds": seconds})
    lines = [f"Tracker ablation, {backbone.name}, '{args.mode}' queries, {len(videos)} clips (x100).", "",
             "| row | " + " | ".join(label for label, _ in COLUMNS) + " | CPU s |",
             "|---|" + "---:|" * (len(COLUMNS) + 1)]
    for name, r in results.items():
        cells = [f"{100 * r[metric]:.1f}" for _, metric in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds[name]['cpu_s']} |")
    with atomic_path(out / "ablation.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_reporting_errors(lambda a: run(parse_args(a)), argv, debug="--debug" in argv)


if __name__ == "__main__":
    sys.exit(main())
