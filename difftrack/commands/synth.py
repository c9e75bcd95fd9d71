"""Render a procedural video with exact ground-truth tracks (the generator behind training and tests).

Writes OUT.mp4 and OUT_gt.npz / OUT_gt.json in `difftrack track`'s output format (tracks (T, N, 2)
pixel x, y; visibility (T, N); queries (N, 3) as t, x, y), so the clip can be tracked, scored and
analysed (`difftrack analyze --video OUT.mp4 --tracks OUT_gt.npz`).

examples:
  difftrack synth runs/clip.mp4 --seed 7
  difftrack synth runs/demo.mp4 --photo --speed 0.6 --seed 400   # photograph sprites over a photograph wall
  difftrack synth runs/wall.mp4 --control                         # camera pans over a uniform brick wall
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from difftrack.errors import UserError
from difftrack.io import atomic_path, write_video
from difftrack.options import RESULT_BYTES_PER_FRAME, check_query_memory, integer, number, output_file, positive, seed

PHOTO_SEARCH = 2000  # seeds tried after --seed to find an all-photograph clip


def add_arguments(p):
    p.add_argument("out", type=output_file(".mp4"), help="output video path (.mp4); ground truth goes to <stem>_gt.npz/.json beside it")
    p.add_argument("--seed", type=seed, default=0, help="scene seed (same seed, same clip)")
    p.add_argument("--frames", type=integer(min=2), default=24, help="number of frames (default 24)")
    p.add_argument("--size", type=integer(min=16), default=256, help="frame height and width in pixels (default 256)")
    p.add_argument("--grid", type=positive, default=10, help="ground truth for an N x N grid of frame-0 points")
    p.add_argument("--photo", action="store_true",
                   help="use the first scene from --seed on with two or more photograph sprites that stay in view, "
                        "over a photograph wall (the ground truth's meta records that scene's seed as scene_seed)")
    p.add_argument("--speed", type=number(min=0, min_inclusive=False), default=None,
                   help="scale of all motion (default: drawn per scene from 0.6-1.8, like a random frame stride)")
    p.add_argument("--control", action="store_true", help="sprite-free camera pan over a uniform brick wall")
    p.add_argument("--fps", type=number(min=0, min_inclusive=False), default=8.0, help="frame rate (default 8)")


def photo_seed(start: int, frames: int, speed: float | None) -> int:
    from difftrack.data.synthetic import generate_clip

    for seed in range(start, start + PHOTO_SEARCH):
        clip = generate_clip(seed, num_frames=frames, height=16, width=16, speed=speed)
        if len(clip.sprites) >= 2 and clip.wall == "photographic" and all(
                s.texture == "photographic" and np.mean(np.all((s.centre > 0.1) & (s.centre < 0.9), axis=1)) >= 0.7
                for s in clip.sprites):
            return seed
    raise UserError(f"no all-photograph scene among seeds {start}..{start + PHOTO_SEARCH - 1}; try another --seed")


def run(args):
    from difftrack.data.synthetic import generate_clip
    from difftrack.evaluation.queries import query_grid

    out = Path(args.out)
    check_query_memory(args.grid ** 2, args.frames * RESULT_BYTES_PER_FRAME, f"--grid {args.grid}",
                       lambda largest: f"use --grid {math.isqrt(largest)} or less")
    # --photo renders the first photograph scene from --seed on; the seed reported stays the one given
    scene = photo_seed(args.seed, args.frames, args.speed) if args.photo else args.seed
    clip = generate_clip(scene, num_frames=args.frames, height=args.size, width=args.size, speed=args.speed,
                         control=args.control)
    queries = query_grid(args.grid, args.size, args.size).astype(np.float32)
    tracks, visible = clip.track(queries)
    gt = out.with_name(out.stem + "_gt")
    with atomic_path(gt.with_suffix(".npz")) as npz_tmp, atomic_path(gt.with_suffix(".json")) as json_tmp:
        np.savez(npz_tmp, tracks=tracks.transpose(1, 0, 2).astype(np.float32), visibility=visible.T,
                 queries=queries)
        json_tmp.write_text(json.dumps({"tracks": tracks.transpose(1, 0, 2).tolist(), "visibility": visible.T.tolist(),
                                        "queries": queries.tolist(),
                                        "meta": {"seed": args.seed, "scene_seed": scene, "caption": clip.caption,
                                                 "generator": "difftrack.synth"}}))
        write_video(out, clip.video, args.fps)
    print(f"seed {args.seed}: \"{clip.caption}\" -> {out}, {gt.with_suffix('.npz')}")
