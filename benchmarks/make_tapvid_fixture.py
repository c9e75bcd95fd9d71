"""Write a TAP-Vid-format DAVIS-style pickle (dict name -> {'video', 'points', 'occluded'}) of procedural videos.

    python benchmarks/make_tapvid_fixture.py --out fixture/tapvid_davis.pkl              # 3 short videos (CI)
    python benchmarks/make_tapvid_fixture.py --out heldout/tapvid_davis.pkl --num-videos 20 \\
        --seed-offset 200000 --frames 24 --size 256 --points 32                          # held-out evaluation

Video i is difftrack.data.synthetic clip ``seed_offset + i`` named ``synthetic_<seed>`` (see
difftrack.data.clips.tapvid_fixture), so the same arguments always write the same file. Pick a
--seed-offset no training or calibration run uses to keep the evaluation held out (difftrack.evaluation.seeds
lists the ranges; the Lucas-Kanade defaults were chosen on seeds 50,000-50,009).
"""

from __future__ import annotations

import argparse
import sys

from difftrack.data.clips import save_tapvid, tapvid_fixture
from difftrack.errors import OneLineErrorParser, run_reporting_errors
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


def run(args: argparse.Namespace) -> None:
    save_tapvid(args.out, tapvid_fixture(args.num_videos, args.seed_offset, args.frames, args.size, args.points))
    print(f"wrote {args.num_videos} videos to {args.out}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_reporting_errors(lambda a: run(parse_args(a)), argv, debug="--debug" in argv)


if __name__ == "__main__":
    sys.exit(main())
