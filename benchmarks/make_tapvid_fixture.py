"""Write a TAP-Vid-format DAVIS-style pickle (dict name -> {'video', 'points', 'occluded'}) of procedural videos.

    python benchmarks/make_tapvid_fixture.py --out fixture/tapvid_davis.pkl              # 3 short videos (CI)
    python benchmarks/make_tapvid_fixture.py --out heldout/tapvid_davis.pkl --num-videos 20 \\
        --seed-offset 200000 --frames 24 --size 256 --points 32                          # held-out evaluation

Video i is difftrack.data.synthetic clip ``seed_offset + i`` named ``synthetic_<seed>``; its points are
drawn by ``to_tapvid`` with the same seed, so the same arguments always write the same file. Pick a
--seed-offset no training or calibration run uses to keep the evaluation held out: the embedded model
trains on seeds >= 1,000,000, the probe scores seeds from 100,000, the Lucas-Kanade defaults were
chosen on seeds 50,000-50,009, and the TAP-Vid held-out set is seeds 200,000-200,019.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

from tqdm import tqdm

from difftrack.cli import OneLineErrorParser, run_reporting_errors
from difftrack.data.synthetic import generate_clip, to_tapvid
from difftrack.io import atomic_path
from difftrack.options import integer, output_file, seed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog="python benchmarks/make_tapvid_fixture.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=output_file(".pkl", new_parent=True),
                        help="pickle to write (e.g. DIR/tapvid_davis.pkl)")
    parser.add_argument("--num-videos", type=integer(min=1), default=3)
    parser.add_argument("--seed-offset", type=seed, default=0, help="seed of the first video")
    parser.add_argument("--frames", type=integer(min=2), default=8, help="frames per video")
    parser.add_argument("--size", type=integer(min=16), default=64, help="frame height and width in pixels")
    parser.add_argument("--points", type=integer(min=1), default=16, help="tracks per video")
    return parser.parse_args(argv)


def make_fixture(num_videos: int, seed_offset: int = 0, frames: int = 8, size: int = 64, points: int = 16) -> dict:
    videos = {}
    for seed in tqdm(range(seed_offset, seed_offset + num_videos), desc="rendering", unit="video"):
        clip = generate_clip(seed, num_frames=frames, height=size, width=size)
        videos[f"synthetic_{seed:06d}"] = to_tapvid(clip, points, seed)
    return videos


def run(args: argparse.Namespace) -> None:
    fixture = make_fixture(args.num_videos, args.seed_offset, args.frames, args.size, args.points)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_bytes(pickle.dumps(fixture, protocol=pickle.HIGHEST_PROTOCOL))
    print(f"wrote {len(fixture)} videos to {out}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_reporting_errors(lambda a: run(parse_args(a)), argv, debug="--debug" in argv)


if __name__ == "__main__":
    sys.exit(main())
