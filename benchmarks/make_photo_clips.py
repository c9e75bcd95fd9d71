"""Rebuild the frozen held-out photo clips from their manifest, check them against it, write them in TAP-Vid's layout.

    python benchmarks/make_photo_clips.py --out runs/photo_clips                  # rebuild and verify
    python benchmarks/make_photo_clips.py --out runs/photo_clips --new-manifest   # (done once) write the manifest

The manifest (benchmarks/data/photo_clips.json) holds the sets' parameters (clip size, points a clip, frames and
seeds of each set), the SHA-256 of every held-out photograph, of the photographs as resampled for the clips, and of
every clip's arrays. The photographs are not in the repository (the corpus is fetched and cached on first use, see
difftrack/data/photos.py), so neither are the clips: this command renders them on the CPU
(difftrack.data.photo_clips.make_frozen_sets), refuses in one line anything that differs from the manifest, and
only then writes OUT/<set>/tapvid_davis.pkl (a DAVIS-style dict, clip name -> {'video', 'points', 'occluded'}),
which `benchmarks/tapvid.py --dataset davis --root OUT/<set>` and difftrack.data.tapvid.TapVidReader read.
--new-manifest writes the manifest from the library's parameters (difftrack.data.photo_clips.frozen_parameters)
instead of checking against it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MANIFEST = Path(__file__).parent / "data" / "photo_clips.json"
COMMAND = "python benchmarks/make_photo_clips.py --out runs/photo_clips"


def parse_args(argv):
    from difftrack.errors import OneLineErrorParser
    from difftrack.options import output_dir

    parser = OneLineErrorParser(prog="python benchmarks/make_photo_clips.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=output_dir, help="folder for <set>/tapvid_davis.pkl")
    parser.add_argument("--manifest", default=str(MANIFEST), help=f"the manifest (default {MANIFEST})")
    parser.add_argument("--new-manifest", action="store_true",
                        help="write the manifest from the library's parameters instead of checking against it")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    return parser.parse_args(argv)


def run(args) -> None:
    from difftrack.data.photo_clips import make_frozen_sets

    for line in make_frozen_sets(args.out, args.manifest, COMMAND, new_manifest=args.new_manifest):
        print(line)


def main(argv: list[str] | None = None) -> int:
    from difftrack.errors import run_reporting_errors

    argv = sys.argv[1:] if argv is None else list(argv)
    return run_reporting_errors(lambda a: run(parse_args(a)), argv, debug="--debug" in argv)


if __name__ == "__main__":
    sys.exit(main())
