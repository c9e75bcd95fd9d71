"""Screening study of training recipes for the embedded model, at equal compute, before any long run.

Each recipe trains a video model and its image twin side by side (one thread each, `nice`d), for a
number of steps chosen so that every recipe costs about the same CPU time (--minutes; a recipe whose
step costs more, wider heads or more layers, gets proportionally fewer steps, from the per-step
cost factors measured at one thread below). Each row is then scored by:

- moved-point q-k within one token (difftrack.evaluation.matching, benchmarks/embedded_eval.py's measure),
  best layer, at s = 0, 0.1, 0.2, 0.5, on the frozen acceptance clips and on 20 held-out aperiodic clips;
- the two cross-frame diagnostics (difftrack.evaluation.crossframe, as studies/crossframe_diagnostics.py
  runs them): the video - twin training loss gap over the last quarter of the steps, and the loss increase
  when cross-frame attention is removed in every layer.

Runs resume: a finished recipe keeps its JSON (results/embedded/screening/<name>.json), an
interrupted one continues from its checkpoints. The table goes to results/embedded/screening.md.

    nice python studies/embedded_screening.py --runs runs/screening --minutes 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from difftrack.data.clips import load_clips, make_clips
from difftrack.errors import OneLineErrorParser, run_reporting_errors
from difftrack.evaluation.crossframe import last_quarter_loss, removal_losses, training_losses
from difftrack.evaluation.matching import best, matching_accuracy
from difftrack.evaluation.seeds import HELD_OUT_SEED_START

FROZEN_CLIPS = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "acceptance_clips.npz"
NOISE_LEVELS = (0.0, 0.1, 0.2, 0.5)
# Steps of the v2 recipe in one minute at one thread with a second job beside it (1.15 s a step alone,
# about 1.4 s side by side, bf16 autocast on AVX512-BF16).
STEPS_PER_MINUTE = 43
# name -> (what it tests, train-tiny arguments, cost of a step relative to v2, measured at one thread)
RECIPES = {
    "v2": ("the shipped v2 recipe", [], 1.0),
    "aperiodic-anchor": ("aperiodic textures, frame 0 nearly clean in half the clips",
                         ["--aperiodic", "--anchor-clean", "0.5"], 1.0),
    "mid-noise": ("loss weight 4 s (1 - s), favouring mid noise", ["--loss-weight", "mid"], 1.0),
    "curriculum": ("consecutive frames only for the first half (small gaps first)", ["--curriculum", "0.5"], 1.0),
    "head-dim-64": ("4 heads x 64 channels", ["--head-dim", "64"], 2.2),
    "layers-8": ("8 blocks", ["--layers", "8"], 1.27),
    "masked-patches": ("a quarter of the patches pure noise in half the clips (restored only by copying from "
                       "another frame)", ["--mask-patches", "0.25"], 1.0),
    "masked-half-curriculum": ("half the patches pure noise in half the clips, consecutive frames only for the first "
                               "half of the steps (copying learnt at one frame gap first)",
                               ["--mask-patches", "0.5", "--curriculum", "0.5"], 1.0),
    "masked-anchor": ("three quarters of the patches pure noise in half the clips, frame 0 nearly clean in half the "
                      "clips (a clean source to copy from; the twin cannot copy across frames)",
                      ["--mask-patches", "0.75", "--anchor-clean", "0.5"], 1.0),
    "masked-anchor-mid": ("masked-anchor with the loss weight 4 s (1 - s), favouring the mid noise levels the tracker "
                          "reads (masked-anchor gained at s <= 0.2 and lost at s = 0.5)",
                          ["--mask-patches", "0.75", "--anchor-clean", "0.5", "--loss-weight", "mid"], 1.0),
}


def recipe_steps(minutes: float, cost: float) -> int:
    return int(round(minutes * STEPS_PER_MINUTE / cost))


def train_commands(name: str, runs: Path, minutes: float, fp32: bool = False) -> dict[str, list[str]]:
    _, extra, cost = RECIPES[name]
    steps = recipe_steps(minutes, cost)
    base = ["difftrack", "train-tiny", "--steps", str(steps), "--warmup", str(steps // 5), *extra,
            *(["--no-bf16"] if fp32 else [])]
    return {role: base + ["--out", str(runs / name / role), "--run-dir", str(runs / name / f"{role}-run")]
            + (["--image-twin"] if role == "twin" else []) for role in ("video", "twin")}


def train_pair(commands: dict[str, list[str]]) -> None:
    """Both trainings at once, one thread each (each resumes from its checkpoint)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen(["nice", *cmd], env=env, stderr=subprocess.DEVNULL) for cmd in commands.values()]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"training failed (exit codes {codes}): {commands}")


def training_record(model_dir: Path) -> dict:
    return json.loads((model_dir / "training.json").read_text())


def score(name: str, runs: Path, clip_sets: dict, minutes: float, fp32: bool) -> dict:
    commands = train_commands(name, runs, minutes, fp32)
    video, twin = runs / name / "video", runs / name / "twin"
    qk = {}
    for set_name, clips in clip_sets.items():
        for role, path in (("video", video), ("twin", twin)):
            result = matching_accuracy(str(path), clips, "auto", progress=False, noise_levels=NOISE_LEVELS)
            qk[f"{set_name}/{role}"] = {
                "best": dict(zip(("score", "layer", "s"), best(result, "qk"))),
                "best_by_s": {f"{s}": max(result["qk"][layer][f"{s}"]["moved"] for layer in result["qk"])
                              for s in NOISE_LEVELS},
                "noisy_patch": {f"{s}": result["baselines"]["noisy_patch"][f"{s}"]["moved"] for s in NOISE_LEVELS},
                "ncc_3": {f"{s}": result["baselines"]["ncc_3"][f"{s}"]["moved"] for s in NOISE_LEVELS}}
    records = {role: training_record(path) for role, path in (("video", video), ("twin", twin))}
    video_loss, twin_loss = (last_quarter_loss(training_losses(path)) for path in (video, twin))
    return {"recipe": name, "what": RECIPES[name][0], "commands": {r: " ".join(c) for r, c in commands.items()},
            "steps": recipe_steps(minutes, RECIPES[name][2]),
            "train_wall_seconds": {role: round(r["wall_seconds"], 1) for role, r in records.items()},
            "load_average_after": os.getloadavg(), "qk_moved": qk,
            "training_loss_last_quarter": {"video": video_loss, "twin": twin_loss, "video_minus_twin": video_loss - twin_loss},
            "cross_frame_removal": removal_losses(str(video), clip_sets["acceptance"])}


def markdown(rows: list[dict], command: str) -> str:
    lines = ["# Embedded model: recipe screening at equal compute", "", f"    {command}", "",
             "Moved-point q-k within one token, best layer, at s = " + " / ".join(map(str, NOISE_LEVELS))
             + "; video model, then its image twin. Loss gap: video - twin mean training loss over the last "
             "quarter of the steps (negative: seeing other frames helps). Removal: denoising-loss increase "
             "with cross-frame attention removed in every layer, s = 0.2 / 0.5 / 0.8 (v2: +26 / +23 / +28 %).", "",
             "| recipe | steps | acceptance clips: video | twin | aperiodic clips: video | twin | loss gap | removal |",
             "|---|---:|---|---|---|---|---:|---|"]

    def cells(r, key):
        return " / ".join(f"{v:.3f}" for v in r["qk_moved"][key]["best_by_s"].values())

    for r in rows:
        removal = " / ".join(f"{100 * v['relative_increase']:+.0f}%" for v in r["cross_frame_removal"].values())
        lines.append(f"| {r['recipe']}: {r['what']} | {r['steps']} | {cells(r, 'acceptance/video')} | "
                     f"{cells(r, 'acceptance/twin')} | {cells(r, 'aperiodic/video')} | {cells(r, 'aperiodic/twin')} | "
                     f"{r['training_loss_last_quarter']['video_minus_twin']:+.4f} | {removal} |")
    if rows:
        ref = rows[0]["qk_moved"]
        lines += ["", "Baselines on the same clips and noise (s = " + " / ".join(map(str, NOISE_LEVELS)) + "):", ""]
        for set_name in ("acceptance", "aperiodic"):
            for kind in ("noisy_patch", "ncc_3"):
                lines.append(f"- {set_name} clips, {kind}: "
                             + " / ".join(f"{v:.3f}" for v in ref[f"{set_name}/video"][kind].values()))
    lines += ["", "Commands of each row (video model; the twin adds --image-twin and its own directories):", ""]
    lines += [f"- {r['recipe']}: `{r['commands']['video']}` (wall {r['train_wall_seconds']['video'] / 60:.1f} / "
              f"{r['train_wall_seconds']['twin'] / 60:.1f} min video / twin, side by side at one thread each; "
              f"load average after {r['load_average_after'][0]:.1f})" for r in rows]
    return "\n".join(lines) + "\n"


def parse_args(argv) -> argparse.Namespace:
    from difftrack.options import number, output_dir

    p = OneLineErrorParser(prog="python studies/embedded_screening.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=output_dir, default="runs/screening", help="models and checkpoints of every recipe")
    p.add_argument("--minutes", type=number(min=0, min_inclusive=False), default=15.0,
                   help="minutes of the v2 recipe per model, at one thread beside a second job (default 15)")
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--out", type=output_dir, default="results/embedded")
    p.add_argument("--no-bf16", action="store_true",
                   help="train in fp32 (on CPUs without native bf16, where autocast is emulated and ~10x slower); "
                        "the same steps as a bf16 screening, so compare rows only within one --out")
    return p.parse_args(argv)


def run(args: argparse.Namespace, command: str) -> None:
    from difftrack.io import atomic_path, write_json

    runs, out = Path(args.runs), Path(args.out)
    clip_sets = {"acceptance": load_clips(FROZEN_CLIPS),
                 "aperiodic": make_clips(list(range(HELD_OUT_SEED_START, HELD_OUT_SEED_START + 20)), 8, (64, 64), 4,
                                         aperiodic=True)}
    (out / "screening").mkdir(parents=True, exist_ok=True)
    for name in args.recipes:
        row_file = out / "screening" / f"{name}.json"
        if row_file.is_file():
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name}: training", flush=True)
        train_pair(train_commands(name, runs, args.minutes, args.no_bf16))
        print(f"[{time.strftime('%H:%M:%S')}] {name}: scoring", flush=True)
        write_json(row_file, score(name, runs, clip_sets, args.minutes, args.no_bf16))
        rows = [json.loads((out / "screening" / f"{n}.json").read_text()) for n in RECIPES
                if (out / "screening" / f"{n}.json").is_file()]
        with atomic_path(out / "screening.md") as tmp:
            tmp.write_text(markdown(rows, command))
    print((out / "screening.md").read_text())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = "nice python studies/embedded_screening.py " + " ".join(argv)
    return run_reporting_errors(lambda a: run(parse_args(a), command), argv, debug=False)


if __name__ == "__main__":
    sys.exit(main())
