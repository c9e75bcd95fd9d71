"""Calibrate the tracker's occlusion thresholds on procedural videos (never on test data).

Tracks TAP-Vid-style queries ('first' mode) on generator clips whose seeds no training run or
held-out evaluation uses, keeps each (frame, point)'s forward-backward cycle error, matching peak
and the temporal decoder's occluded state, and picks the (cycle_threshold, peak_threshold) pair with the best mean average Jaccard. The result
is written to difftrack/calibration/<model>.json, which DiffTracker reads as its default for that
model.

    python studies/calibrate_tracker.py --model tiny-video --num-videos 8
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from difftrack.evaluation.seeds import CALIBRATION_SEED_START


def main(argv=None):
    from difftrack.options import add_device_arguments, integer, output_file, positive, seed

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-video")
    add_device_arguments(p)
    p.add_argument("--num-videos", type=positive, default=8)
    p.add_argument("--seed-offset", type=seed, default=CALIBRATION_SEED_START)
    p.add_argument("--frames", type=integer(min=2), default=24)
    p.add_argument("--size", type=integer(min=16), default=256)
    p.add_argument("--points", type=positive, default=48)
    p.add_argument("--out", type=output_file(".json"), default=None, help="default: difftrack/calibration/<model>.json")
    args = p.parse_args(argv)

    from difftrack.backbones.settings import calibration_path
    from difftrack.data.synthetic import generate_clip, to_tapvid
    from difftrack.evaluation.metrics import average_over_videos
    from difftrack.evaluation.scoring import LabelledVideo, recorded, score_tracker
    from difftrack.io import write_json
    from difftrack.tracker import DiffTracker

    tracker = DiffTracker(args.model, cycle_threshold=float("inf"), peak_threshold=0.0, device=args.device,
                          dtype=args.dtype)
    records = []
    for seed in tqdm(range(args.seed_offset, args.seed_offset + args.num_videos), desc="calibration videos"):
        clip = generate_clip(seed, num_frames=args.frames, height=args.size, width=args.size)
        sample = to_tapvid(clip, args.points, seed)
        video = LabelledVideo(clip.video, sample["points"] * np.float32([args.size, args.size]), sample["occluded"])
        tracks, _ = tracker(clip.video, video.protocol_queries("first").query_points)
        records.append((video, tracks, dict(tracker.diagnostics)))

    def score(cycle_threshold, peak_threshold):
        """The recorded tracks with the occlusion calls these thresholds make."""
        per_video = []
        for video, tracks, diag in records:
            visible = ~diag["hidden"] & (diag["cycle_error"] <= cycle_threshold) & (diag["peak"] >= peak_threshold)
            per_video.append(score_tracker(recorded(tracks, visible), video, "first").metrics)
        return average_over_videos(per_video)

    peaks = np.concatenate([d["peak"].ravel() for _, _, d in records])
    candidates_cycle = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, float("inf")]
    candidates_peak = [0.0, *np.quantile(peaks, [0.05, 0.1, 0.2, 0.3, 0.5]).round(4).tolist()]
    table = [(c, pk, score(c, pk)) for c in candidates_cycle for pk in candidates_peak]
    best = max(table, key=lambda r: r[2]["average_jaccard"])
    always_visible = score(float("inf"), 0.0)
    result = {
        # null = no cycle check (strict JSON has no Infinity)
        "model": tracker.backbone.name, "cycle_threshold": None if math.isinf(best[0]) else best[0],
        "peak_threshold": best[1],
        "calibration": {"seeds": [args.seed_offset, args.seed_offset + args.num_videos - 1], "frames": args.frames,
                        "size": args.size, "points_per_video": args.points, "mode": "first"},
        "metrics_at_best": best[2], "metrics_always_visible": always_visible,
        "grid": [{"cycle_threshold": None if math.isinf(c) else c, "peak_threshold": pk, "average_jaccard": m["average_jaccard"],
                  "occlusion_accuracy": m["occlusion_accuracy"]} for c, pk, m in table],
    }
    out = Path(args.out) if args.out else calibration_path(tracker.backbone.name)
    write_json(out, result)
    print(f"best cycle_threshold={best[0]} peak_threshold={best[1]}: AJ {best[2]['average_jaccard']:.3f} "
          f"OA {best[2]['occlusion_accuracy']:.3f} (always visible: AJ {always_visible['average_jaccard']:.3f} "
          f"OA {always_visible['occlusion_accuracy']:.3f}) -> {out}")


if __name__ == "__main__":
    sys.exit(main())
