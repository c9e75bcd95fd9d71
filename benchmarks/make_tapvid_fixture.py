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

from difftrack.data.synthetic import generate_clip, to_tapvid
from difftrack.errors import UserError
from difftrack.io import atomic_path


class _OneLineErrors(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see python benchmarks/make_tapvid_fixture.py --help)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _OneLineErrors(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="pickle to write (e.g. DIR/tapvid_davis.pkl)")
    parser.add_argument("--num-videos", type=int, default=3)
    parser.add_argument("--seed-offset", type=int, default=0, help="seed of the first video")
    parser.add_argument("--frames", type=int, default=8, help="frames per video")
    parser.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    parser.add_argument("--points", type=int, default=16, help="tracks per video")
    args = parser.parse_args(argv)
    for flag, value, low in (("--num-videos", args.num_videos, 1), ("--frames", args.frames, 2),
                             ("--size", args.size, 16), ("--points", args.points, 1)):
        if value < low:
            raise UserError(f"{flag} must be at least {low}, got {value}")
    return args


def make_fixture(num_videos: int, seed_offset: int = 0, frames: int = 8, size: int = 64, points: int = 16) -> dict:
    videos = {}
    for seed in tqdm(range(seed_offset, seed_offset + num_videos), desc="rendering", unit="video"):
        clip = generate_clip(seed, num_frames=frames, height=size, width=size)
        videos[f"synthetic_{seed:06d}"] = to_tapvid(clip, points, seed)
    return videos


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        out = Path(args.out)
        fixture = make_fixture(args.num_videos, args.seed_offset, args.frames, args.size, args.points)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            tmp.write_bytes(pickle.dumps(fixture, protocol=pickle.HIGHEST_PROTOCOL))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(fixture)} videos to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
