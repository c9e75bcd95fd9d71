"""Acceptance measurement of the embedded models: do their q-k match points across frames?

On held-out generator clips (seeds disjoint from training), from frame-0 query tokens (an 8x8 grid of token
centres) to every other frame: the argmax of the head-averaged per-frame softmax of q.k, correct when within
one token (Chebyshev) of the true position, pooled over ground-truth-visible (point, frame) pairs, on moved
points and on all, at each rectified-flow noise level s, next to intermediate features, zero motion, the
noisy-patch baseline and normalised cross-correlation in windows of 1, 3 or 5 tokens
(difftrack.evaluation.matching says how each is measured).

The clips are the frozen acceptance set (benchmarks/data/acceptance_clips.npz: the 20 clips of seeds
200000-200019, 8 frames at 64x64, with their ground truth), so that a change of the generator cannot
make the test easier; --generate draws clips of the current generator instead (its held-out seeds).

    python benchmarks/embedded_eval.py --models tiny-video tiny-image --out results/embedded
    python benchmarks/embedded_eval.py --freeze benchmarks/data/acceptance_clips.npz   # (done once, for v2)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from difftrack.data.clips import load_clips, make_clips, save_clips
from difftrack.errors import OneLineErrorParser, UserError, run_reporting_errors
from difftrack.evaluation.matching import BASELINES, NOISE_LEVELS, best, matching_accuracy
from difftrack.evaluation.seeds import HELD_OUT_SEED_START, TRAINING_SEED_START
from difftrack.io import atomic_path, write_json
from difftrack.options import add_device_arguments, output_dir, output_file, positive, seed

FROZEN_CLIPS = Path(__file__).parent / "data" / "acceptance_clips.npz"


def markdown(results: list[dict], seeds: list[int], command: str) -> str:
    levels = [f"{s}" for s in NOISE_LEVELS]
    lines = [f"# Embedded models: frame-0 q-k matching on {len(seeds)} held-out generator clips",
             "", f"Seeds {seeds[0]}..{seeds[-1]} (training clips use seeds >= {TRAINING_SEED_START}). Command:",
             "", f"    {command}", "",
             "Accuracy within one token (Chebyshev) of argmax matching from frame 0 to every other frame, pooled "
             "over ground-truth-visible (point, frame) pairs; MOVED = true position more than one token from the "
             "query's own position. Columns: rectified-flow noise level s (x_s = (1 - s) x0 + s noise).", ""]
    for subset in ("moved", "all"):
        lines += [f"## {subset.upper()} points", "",
                  "| model | descriptor | layer | " + " | ".join(f"s={s}" for s in levels) + " |",
                  "|---|---|---|" + "---|" * len(levels)]
        for r in results:
            for kind in ("qk", "feature"):
                for layer, by_s in r[kind].items():
                    lines.append(f"| {r['model']} | {kind} | {layer} | "
                                 + " | ".join(f"{by_s[s][subset]:.3f}" for s in levels) + " |")
            for kind in BASELINES:
                by_s = r["baselines"][kind]
                lines.append(f"| {r['model']} | {kind} (baseline) | - | "
                             + " | ".join(f"{by_s[s][subset]:.3f}" for s in levels) + " |")
        n = results[0]["qk"]["0"][levels[0]][f"n_{subset}"]
        lines += ["", f"{n} (point, frame) pairs per cell.", ""]
    lines += ["## Acceptance (q-k, moved points, best (layer, s))", ""]
    for r in results:
        score, layer, s = best(r, "qk")
        patch = r["baselines"]["noisy_patch"][f"{s}"]["moved"]
        ncc = r["baselines"]["ncc_3"]["0.0"]["moved"]
        passed = score >= ncc and score >= 2 * patch
        lines.append(f"- {r['model']}: {score:.3f} at layer {layer}, s={s}; noisy-patch baseline at s={s}: "
                     f"{patch:.3f} (ratio {score / max(patch, 1e-9):.2f}); clean 3-token NCC {ncc:.3f}; "
                     f"bar (>= clean 3-token NCC and >= 2x noisy patch): {'REACHED' if passed else 'NOT reached'}")
    return "\n".join(lines) + "\n"


def parse_args(argv) -> argparse.Namespace:
    p = OneLineErrorParser(prog="python benchmarks/embedded_eval.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny-video", "tiny-image"])
    add_device_arguments(p)
    p.add_argument("--clips-file", default=str(FROZEN_CLIPS), help="frozen clips (default: the acceptance set)")
    p.add_argument("--generate", action="store_true",
                   help="draw --clips clips of the current generator from --seed-start instead of the frozen file")
    p.add_argument("--aperiodic", action="store_true",
                   help="--generate: the aperiodic distribution (walls and sprites speckled or photographic)")
    p.add_argument("--clips", type=positive, default=20)
    p.add_argument("--seed-start", type=seed, default=HELD_OUT_SEED_START)
    p.add_argument("--frames", type=positive, default=8)
    p.add_argument("--size", type=positive, default=64, help="--generate / --freeze: frame side in pixels")
    p.add_argument("--patch", type=positive, default=4, help="--generate / --freeze: the models' patch size")
    p.add_argument("--freeze", type=output_file(".npz", new_parent=True), metavar="FILE",
                   help="write the clips of --seed-start.. to FILE and stop")
    p.add_argument("--backend", default="auto")
    p.add_argument("--out", type=output_dir, default="results/embedded")
    args = p.parse_args(argv)
    if args.seed_start + args.clips > TRAINING_SEED_START:
        raise UserError(f"held-out seeds must stay below {TRAINING_SEED_START} (training seeds)")
    return args


def run(args: argparse.Namespace, command: str) -> None:
    seeds = list(range(args.seed_start, args.seed_start + args.clips))
    if args.freeze or args.generate:
        clips = make_clips(seeds, args.frames, (args.size, args.size), args.patch, aperiodic=args.aperiodic)
    else:
        clips = load_clips(args.clips_file)
    if args.freeze:
        Path(args.freeze).parent.mkdir(parents=True, exist_ok=True)
        save_clips(args.freeze, clips)
        print(f"froze {len(seeds)} clips ({seeds[0]}..{seeds[-1]}) -> {args.freeze}")
        return
    seeds = clips["seeds"].tolist()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = [matching_accuracy(m, clips, args.backend, device=args.device, dtype=args.dtype) for m in args.models]
    summary = {"command": command, "seeds": seeds, "clips": "generated" if args.generate else str(args.clips_file),
               "noise_levels": list(NOISE_LEVELS), "frames": int(clips["video"].shape[1]),
               "seconds": round(time.perf_counter() - start, 1), "results": results,
               "acceptance": {r["model"]: dict(zip(("score", "layer", "s"), best(r, "qk"))) for r in results}}
    write_json(out / "embedded_eval.json", summary)
    with atomic_path(out / "embedded_eval.md") as tmp:
        tmp.write_text(markdown(results, seeds, command))
    print((out / "embedded_eval.md").read_text())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "python benchmarks/embedded_eval.py " + " ".join(argv)
    return run_reporting_errors(lambda a: run(parse_args(a), command), argv, debug=False)


if __name__ == "__main__":
    sys.exit(main())
