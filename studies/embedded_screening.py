"""Screening studies of training recipes for the embedded model, at equal compute, before any long run.

Each row trains a video model and its image twin side by side (one thread each, `nice`d), and both are scored; a
video model that beats its twin uses what it sees in other frames. Two screenings:

The recipe screening (--runs) trains and scores each recipe of RECIPES in turn, for a number of steps chosen so
that every recipe costs about the same CPU time (--minutes; a recipe whose step costs more, wider heads or more
layers, gets proportionally fewer steps, from the per-step cost factors measured at one thread below). Scores:

- moved-point q-k within one token (difftrack.evaluation.matching, benchmarks/embedded_eval.py's measure),
  best layer, at s = 0, 0.1, 0.2, 0.5, on the frozen acceptance clips and on 20 held-out aperiodic clips;
- the two cross-frame diagnostics (difftrack.evaluation.crossframe, as studies/crossframe_diagnostics.py
  runs them): the video - twin training loss gap over the last quarter of the steps, and the loss increase
  when cross-frame attention is removed in every layer.

Its table goes to OUT/screening.md, each recipe's scores to OUT/screening/<recipe>.json.

    nice python studies/embedded_screening.py --runs runs/screening --minutes 15

The v4 screening (--rows-dir) screens the data and model axes of the next embedded model (V4_ROWS): photographs
against the procedural mix, pixels per token 64/4, 128/8 and 256/16 (the same 16 x 16 tokens), and the
masked-anchor objective. Every model trains V4_STEPS steps in fp32: equal steps are equal compute here, since every
row's step costs the v2 recipe's within 8 % (results/embedded/step_times.json). It trains only when asked
(--train: the unfinished rows in turn; --show-commands prints what it would run); otherwise it scores every row
whose video model and twin have both finished, and skips the rows scored already. Scores of each model:

- moved-point q-k as above on the frozen acceptance clips (64x64, resized to the model's input size) and on the
  frozen held-out photo clips (--photo-clips: 8 clips of 24 frames at 256x256, resized to the model's input size),
  cut into windows of the model's frames (its tracking window), each scored from its first frame on the tracked
  points visible there (difftrack.evaluation.matching.tracked_targets: moved = more than one token from the
  query's token), next to the noisy-patch and 1/3/5-token NCC baselines on the same input;
- the loss gap and the cross-frame attention removal, as above;
- tracking on the photo clips with difftrack's default tracker for the model (TAP-Vid's protocol 'first', at
  256x256), next to zero motion and Lucas-Kanade: AJ, delta_avg, OA. The bar: AJ at least zero motion's + 15
  points and at least half of Lucas-Kanade's.

Each row's scores go to OUT/screening-v4/<row>.json, the table (every row, its training command and wall time, the
baselines) to OUT/screening-v4.md.

    OMP_NUM_THREADS=1 nice -n 10 python studies/embedded_screening.py --rows-dir runs/screening-v4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from difftrack.data.clips import load_clips, make_clips, tracked_clips
from difftrack.errors import OneLineErrorParser, UserError, run_reporting_errors
from difftrack.evaluation.crossframe import last_quarter_loss, removal_losses, training_losses
from difftrack.evaluation.matching import NCC_WINDOWS, best, matching_accuracy
from difftrack.evaluation.seeds import HELD_OUT_SEED_START

FROZEN_CLIPS = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "acceptance_clips.npz"
NOISE_LEVELS = (0.0, 0.1, 0.2, 0.5)
ROLES = ("video", "twin")
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

# The v4 screening, in training order: name -> (what it tests, train-tiny arguments). The training steps are the
# fp32 screening's (13 minutes of v2 at 43 steps a minute), its warm-up a fifth of them.
V4_STEPS, V4_WARMUP = 559, 111
V4_ROWS = {
    "photos-128": ("photographs, 128/8 pixels per token", ["--data", "photos", "--size", "128", "--patch", "8"]),
    "mix-64": ("the procedural mix, 64/4 pixels per token", []),
    "photos-128-masked-anchor": ("photographs, 128/8, masked-anchor (three quarters of the patches pure noise in half "
                                 "the clips, frame 0 nearly clean in half the clips)",
                                 ["--data", "photos", "--size", "128", "--patch", "8", "--mask-patches", "0.75",
                                  "--anchor-clean", "0.5"]),
    "photos-64": ("photographs, 64/4 pixels per token", ["--data", "photos"]),
    "mix-128": ("the procedural mix, 128/8 pixels per token", ["--size", "128", "--patch", "8"]),
    "photos-256": ("photographs, 256/16 pixels per token", ["--data", "photos", "--size", "256", "--patch", "16"]),
}
# Rows left untrained, and why (the table says so in their place).
NOT_TRAINED = {"photos-256": "not trained: at 128/8 both photographs and the mix matched and tracked far worse than at "
                             "64/4 for the same compute, so the CPU time went to the long run of the winner"}
# The screening's winner (best tracking on the photo clips, q-k there level with photos-64), trained long: twice
# the shipped model's steps, about 6 machine-hours for video and twin side by side here.
WINNER = "mix-64"
LONG_STEPS, LONG_WARMUP = 6000, 400
LONG_ROW = f"{WINNER}-long"
LONG_WHAT = f"{WINNER} trained long ({LONG_STEPS} steps, warm-up {LONG_WARMUP})"
SHIPPED_ROW = "shipped-v2"
SHIPPED_WHAT = "the shipped tiny-video and tiny-image (v2 recipe, trained long: the bar to beat)"
PHOTO_CLIPS = "runs/photo_clips/frames24"
TRACKING_PROTOCOL = "first"
TRACKING_METRICS = (("AJ", "average_jaccard"), ("delta_avg", "average_pts_within_thresh"), ("OA", "occlusion_accuracy"))
MATCHING_BASELINES = ("noisy_patch", *(f"ncc_{w}" for w in NCC_WINDOWS))


def recipe_steps(minutes: float, cost: float) -> int:
    return int(round(minutes * STEPS_PER_MINUTE / cost))


def train_commands(name: str, runs: Path, minutes: float, fp32: bool = False) -> dict[str, list[str]]:
    _, extra, cost = RECIPES[name]
    steps = recipe_steps(minutes, cost)
    base = ["difftrack", "train-tiny", "--steps", str(steps), "--warmup", str(steps // 5), *extra,
            *(["--no-bf16"] if fp32 else [])]
    return {role: base + ["--out", str(runs / name / role), "--run-dir", str(runs / name / f"{role}-run")]
            + (["--image-twin"] if role == "twin" else []) for role in ROLES}


def pair_commands(options: list[str], steps: int, warmup: int, folder: Path) -> dict[str, list[str]]:
    """The train-tiny commands of a video model and its twin in ``folder`` (a rerun resumes from the checkpoint)."""
    base = ["difftrack", "train-tiny", "--steps", str(steps), "--warmup", str(warmup), "--no-bf16", *options]
    return {role: base + (["--image-twin"] if role == "twin" else [])
            + ["--out", str(folder / role), "--run-dir", str(folder / f"{role}-run")] for role in ROLES}


def v4_commands(name: str, rows_dir: Path) -> dict[str, list[str]]:
    return pair_commands(V4_ROWS[name][1], V4_STEPS, V4_WARMUP, rows_dir / name)


def long_run_commands(long_dir: Path) -> dict[str, list[str]]:
    return pair_commands(V4_ROWS[WINNER][1], LONG_STEPS, LONG_WARMUP, long_dir)


def train_side_by_side(commands: dict[str, list[str]], logs: Path, niceness: int) -> None:
    """The trainings of ``commands`` (role -> command) at once, one thread each (each resumes from its checkpoint),
    their progress to ``logs``-<role>.log."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    for role, cmd in commands.items():
        with open(f"{logs}-{role}.log", "w") as log:
            procs.append(subprocess.Popen(["nice", "-n", str(niceness), *cmd], env=env, stdout=log, stderr=log))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"training failed (exit codes {codes}; logs {logs}-*.log): {commands}")


def training_record(model_dir: Path) -> dict:
    return json.loads((model_dir / "training.json").read_text())


def qk_summary(result: dict) -> dict:
    """The best (layer, s) of q-k on moved points, and the best layer's score at each noise level."""
    return {"best": dict(zip(("score", "layer", "s"), best(result, "qk"))),
            "best_by_s": {f"{s}": max(result["qk"][layer][f"{s}"]["moved"] for layer in result["qk"])
                          for s in NOISE_LEVELS}}


def baselines_by_s(result: dict, kinds) -> dict:
    return {kind: {f"{s}": result["baselines"][kind][f"{s}"]["moved"] for s in NOISE_LEVELS} for kind in kinds}


def training_rows(video: Path, twin: Path) -> dict:
    """Wall times and the loss gap of a video model and its twin, from their training.json."""
    video_loss, twin_loss = (last_quarter_loss(training_losses(path)) for path in (video, twin))
    return {"train_wall_seconds": {role: round(training_record(path)["wall_seconds"], 1)
                                   for role, path in (("video", video), ("twin", twin))},
            "training_loss_last_quarter": {"video": video_loss, "twin": twin_loss,
                                           "video_minus_twin": video_loss - twin_loss}}


# ----- the recipe screening --------------------------------------------------------------------------------------

def score(name: str, runs: Path, clip_sets: dict, minutes: float, fp32: bool) -> dict:
    commands = train_commands(name, runs, minutes, fp32)
    video, twin = runs / name / "video", runs / name / "twin"
    qk = {}
    for set_name, clips in clip_sets.items():
        for role, path in (("video", video), ("twin", twin)):
            result = matching_accuracy(str(path), clips, "auto", progress=False, noise_levels=NOISE_LEVELS)
            qk[f"{set_name}/{role}"] = {**qk_summary(result), **baselines_by_s(result, ("noisy_patch", "ncc_3"))}
    return {"recipe": name, "what": RECIPES[name][0], "commands": {r: " ".join(c) for r, c in commands.items()},
            "steps": recipe_steps(minutes, RECIPES[name][2]), **training_rows(video, twin),
            "load_average_after": os.getloadavg(), "qk_moved": qk,
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
        lines.append(f"| {r['recipe']}: {r['what']} | {r['steps']} | {cells(r, 'acceptance/video')} | "
                     f"{cells(r, 'acceptance/twin')} | {cells(r, 'aperiodic/video')} | {cells(r, 'aperiodic/twin')} | "
                     f"{r['training_loss_last_quarter']['video_minus_twin']:+.4f} | {removal_cell(r)} |")
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


def removal_cell(row: dict) -> str:
    return " / ".join(f"{100 * v['relative_increase']:+.0f}%" for v in row["cross_frame_removal"].values())


def run_recipes(args: argparse.Namespace, command: str) -> None:
    from difftrack.io import atomic_path, write_json

    runs, out = Path(args.runs), Path(args.out)
    clip_sets = {"acceptance": load_clips(args.acceptance_clips),
                 "aperiodic": make_clips(list(range(HELD_OUT_SEED_START, HELD_OUT_SEED_START + 20)), 8, (64, 64), 4,
                                         aperiodic=True)}
    (out / "screening").mkdir(parents=True, exist_ok=True)
    for name in args.recipes:
        row_file = out / "screening" / f"{name}.json"
        if row_file.is_file():
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name}: training", flush=True)
        train_side_by_side(train_commands(name, runs, args.minutes, args.no_bf16), runs / name, niceness=10)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: scoring", flush=True)
        write_json(row_file, score(name, runs, clip_sets, args.minutes, args.no_bf16))
        rows = [json.loads((out / "screening" / f"{n}.json").read_text()) for n in RECIPES
                if (out / "screening" / f"{n}.json").is_file()]
        with atomic_path(out / "screening.md") as tmp:
            tmp.write_text(markdown(rows, command))
    print((out / "screening.md").read_text())


# ----- the v4 screening ------------------------------------------------------------------------------------------

class PhotoClips:
    """The frozen photo clips as the v4 screening scores them: TAP-Vid videos at the protocol's size for the
    trackers, and sets for matching, one per (token grid, window) a model asks for."""

    def __init__(self, root: Path):
        from difftrack.data.photo_clips import clip_seed
        from difftrack.data.tapvid import TapVidReader
        from difftrack.evaluation.scoring import protocol_video

        entries = [(name, load()) for name, load in TapVidReader("davis", root).entries()]
        self.source = str(root)
        self.seeds = [clip_seed(name) for name, _ in entries]
        self.entries = [{"video": v.video, "points": v.points, "occluded": v.occluded} for _, v in entries]
        self.labelled = [protocol_video(name, v) for name, v in entries]
        self._matching = {}

    def matching(self, grid: int, window: int) -> dict:
        if (grid, window) not in self._matching:
            self._matching[(grid, window)] = tracked_clips(self.entries, self.seeds, window, grid)
        return self._matching[(grid, window)]

    def tracking_baselines(self) -> dict:
        from difftrack.baselines import lucas_kanade, zero_motion
        from difftrack.evaluation.scoring import score_tracker

        return {name: score_tracker(tracker, self.labelled, TRACKING_PROTOCOL).metrics
                for name, tracker in (("zero_motion", zero_motion), ("lucas_kanade", lucas_kanade))}


def model_finished(model_dir: Path) -> bool:
    return (model_dir / "training.json").is_file()  # train-tiny writes it when the last step is done


def row_finished(rows_dir: Path, name: str) -> bool:
    return all(model_finished(rows_dir / name / role) for role in ROLES)


def model_reference(path: Path) -> str:
    """What to load ``path`` as: a shipped model by its registry name, so that it is scored as users get it, with
    the tracker's occlusion thresholds calibrated for that name (difftrack/calibration/); any other by its path."""
    from difftrack.backbones.embedded import EMBEDDED_DIR

    shipped = {(EMBEDDED_DIR / name).resolve(): name for name in ("tiny-video", "tiny-image")}
    return shipped.get(Path(path).resolve(), str(path))


def score_model(path: Path, acceptance: dict, photos: PhotoClips) -> dict:
    """One model's q-k matching on both clip sets and its tracking on the photo clips, each timed."""
    import torch

    from difftrack.backbones import create_backbone
    from difftrack.evaluation.scoring import score_tracker
    from difftrack.tracker import create_tracker

    backbone = create_backbone(model_reference(path))
    height, width = backbone.native_size
    grid = width // backbone.patch_size
    sets = {"acceptance": acceptance, "photos": photos.matching(grid, backbone.frame_window)}
    seconds, qk, baselines = {}, {}, {}
    for set_name, clips in sets.items():
        started = time.perf_counter()
        result = matching_accuracy(str(path), clips, "auto", progress=False, noise_levels=NOISE_LEVELS)
        seconds[f"matching_{set_name}"] = round(time.perf_counter() - started, 1)
        qk[set_name] = qk_summary(result)
        baselines[set_name] = baselines_by_s(result, MATCHING_BASELINES)
    tracker = create_tracker(None, backbone)
    started = time.perf_counter()
    tracking = score_tracker(tracker, photos.labelled, TRACKING_PROTOCOL).metrics
    seconds["tracking"] = round(time.perf_counter() - started, 1)
    config = tracker.config
    return {"input_size": [height, width], "patch": backbone.patch_size, "window": backbone.frame_window,
            "threads": torch.get_num_threads(), "qk_moved": qk, "matching_baselines": baselines,
            "tracking": {"tracker": {"name": tracker.name, "layers": config.layers, "steps": config.steps,
                                     "num_steps": config.num_steps, "cycle_threshold": config.cycle_threshold,
                                     "peak_threshold": config.peak_threshold},
                         "metrics": {label: tracking[metric] for label, metric in TRACKING_METRICS}},
            "scoring_seconds": seconds}


def score_pair(name: str, video: Path, twin: Path, acceptance: dict, photos: PhotoClips) -> dict:
    """A video model and its twin scored as a row: both models, their training, cross-frame removal."""
    models = {}
    for role, path in (("video", video), ("twin", twin)):
        print(f"[{time.strftime('%H:%M:%S')}] {name}: scoring the {role} model", flush=True)
        models[role] = score_model(path, acceptance, photos)
    started = time.perf_counter()
    removal = removal_losses(str(video), acceptance)
    models["video"]["scoring_seconds"]["cross_frame_removal"] = round(time.perf_counter() - started, 1)
    return {"row": name, "models": models,
            "steps": {role: training_record(path)["steps"] for role, path in (("video", video), ("twin", twin))},
            **training_rows(video, twin), "load_average_after": os.getloadavg(),
            "cross_frame_removal": removal, "photo_clips": photos.source}


def score_v4_row(name: str, rows_dir: Path, acceptance: dict, photos: PhotoClips) -> dict:
    return {"what": V4_ROWS[name][0], "options": " ".join(V4_ROWS[name][1]),
            "commands": {role: " ".join(cmd) for role, cmd in v4_commands(name, rows_dir).items()},
            **score_pair(name, rows_dir / name / "video", rows_dir / name / "twin", acceptance, photos)}


def score_long_run(long_dir: Path, acceptance: dict, photos: PhotoClips) -> dict:
    return {"what": LONG_WHAT, "options": " ".join(V4_ROWS[WINNER][1]),
            "commands": {role: " ".join(cmd) for role, cmd in long_run_commands(long_dir).items()},
            **score_pair(LONG_ROW, long_dir / "video", long_dir / "twin", acceptance, photos)}


def score_shipped(acceptance: dict, photos: PhotoClips) -> dict:
    """The shipped models (the bar a v4 model must beat), scored as a row; their training ran much longer."""
    from difftrack.backbones.embedded import EMBEDDED_DIR

    return {"what": SHIPPED_WHAT, **score_pair(SHIPPED_ROW, EMBEDDED_DIR / "tiny-video", EMBEDDED_DIR / "tiny-image",
                                               acceptance, photos)}


def s_cells(values: dict) -> str:
    return " / ".join(f"{v:.3f}" for v in values.values())


def tracking_cell(metrics: dict) -> str:
    return " / ".join(f"{100 * metrics[label]:.1f}" for label, _ in TRACKING_METRICS)


def reaches_bar(aj: float, baselines: dict) -> bool:
    """The acceptance bar: AJ at least zero motion's + 15 points and at least half of Lucas-Kanade's."""
    return (aj >= baselines["zero_motion"]["average_jaccard"] + 0.15
            and aj >= baselines["lucas_kanade"]["average_jaccard"] / 2)


def clips_description(videos) -> str:
    """'C clips of T frames, HxW' of uint8 videos (C, T, H, W, 3), or of a list of (T, H, W, 3) ones."""
    frames, height, width = videos[0].shape[:3]
    return f"{len(videos)} clips of {frames} frames, {height}x{width}"


def v4_markdown(rows_dir: Path, scored: dict, tracking_baselines: dict, clips: dict, command: str) -> str:
    """The v4 table; ``clips``: the acceptance and photo clips described (:func:`clips_description`)."""
    levels = " / ".join(map(str, NOISE_LEVELS))
    lines = ["# Embedded model v4: data and pixels per token, screened at equal compute", "", f"    {command}", "",
             f"Every model trains {V4_STEPS} steps in fp32 at one thread, its image twin beside it (equal steps are "
             "equal compute: every row's step costs the v2 recipe's within 8 %, results/embedded/step_times.json). "
             f"Moved-point q-k within one token, best layer, at s = {levels}, video model then its image twin: on "
             f"the frozen acceptance clips (generator clips: {clips['acceptance']}, resized to the model's input "
             f"size) and on the frozen held-out photo clips ({clips['photos']}, resized to the model's input size, "
             "cut into windows of the model's tracking window, the length of its training clips; the tracked points "
             "visible on a window's first frame, moved when more than one token from their query's token). "
             "Loss gap: video - twin mean training loss "
             "over the last quarter of the steps (negative: seeing other frames helps). Removal: denoising-loss "
             "increase with cross-frame attention removed in every layer, s = 0.2 / 0.5 / 0.8, on the acceptance "
             "clips. Tracking: difftrack's default tracker for the model on the photo clips (TAP-Vid's protocol "
             "'first', at 256x256), AJ / delta_avg / OA x 100; bar: AJ >= zero motion's + 15 and >= half of "
             "Lucas-Kanade's.", "",
             "| row | acceptance clips: video | twin | photo clips: video | twin | loss gap | removal | "
             "tracking: video | twin | bar (video / twin) |",
             "|---|---|---|---|---|---:|---|---|---|---|"]
    labels = {SHIPPED_ROW: f"{SHIPPED_ROW}: {SHIPPED_WHAT}"}
    if LONG_ROW in scored:
        labels[LONG_ROW] = f"{LONG_ROW}: {LONG_WHAT}"
    labels.update({name: f"{name}: {what} (" + (f"`{' '.join(options)}`" if options else "v2's options") + ")"
                   for name, (what, options) in V4_ROWS.items()})
    for name, label in labels.items():
        r = scored.get(name)
        if r is None:
            state = NOT_TRAINED.get(name) or f"not {'scored' if row_finished(rows_dir, name) else 'finished'}"
            lines.append(f"| {label} | {state} |" + " |" * 8)
            continue
        if name == SHIPPED_ROW:
            label += f" ({r['steps']['video']} / {r['steps']['twin']} steps)"
        video, twin = r["models"]["video"], r["models"]["twin"]
        bar = " / ".join("reached" if reaches_bar(m["tracking"]["metrics"]["AJ"], tracking_baselines) else "not"
                         for m in (video, twin))
        lines.append(f"| {label} | {s_cells(video['qk_moved']['acceptance']['best_by_s'])} | "
                     f"{s_cells(twin['qk_moved']['acceptance']['best_by_s'])} | "
                     f"{s_cells(video['qk_moved']['photos']['best_by_s'])} | "
                     f"{s_cells(twin['qk_moved']['photos']['best_by_s'])} | "
                     f"{r['training_loss_last_quarter']['video_minus_twin']:+.4f} | {removal_cell(r)} | "
                     f"{tracking_cell(video['tracking']['metrics'])} | {tracking_cell(twin['tracking']['metrics'])} | "
                     f"{bar} |")
    lines += ["", f"Baselines on the same clips and noise (moved points, s = {levels}), at each input size "
              "(pixels a side / pixels a token):", ""]
    by_size = {}
    for r in scored.values():
        model = r["models"]["video"]
        by_size.setdefault(f"{model['input_size'][1]}/{model['patch']}", model["matching_baselines"])
    for size, baselines in sorted(by_size.items(), key=lambda item: int(item[0].split("/")[0])):
        for set_name, label in (("acceptance", "acceptance clips"), ("photos", "photo clips")):
            lines.append(f"- {label} at {size}: " + "; ".join(
                f"{kind.replace('_', ' ')} {s_cells(values)}" for kind, values in baselines[set_name].items()))
    lines += ["", "Tracking baselines on the photo clips (AJ / delta_avg / OA x 100): " + "; ".join(
        f"{name.replace('_', ' ')} {tracking_cell({label: metrics[metric] for label, metric in TRACKING_METRICS})}"
        for name, metrics in tracking_baselines.items()) + ".", "",
        "Commands of each row (video model; the twin adds --image-twin and its own directories; two models at a "
        "time at one thread each), training wall time (video / twin) and scoring time (video / twin: matching on "
        "the acceptance and photo clips, tracking):", ""]
    for name in V4_ROWS:
        line = f"- {name}: `{' '.join(v4_commands(name, rows_dir)['video'])}`"
        r = scored.get(name)
        if r is not None:
            seconds = [r["models"][role]["scoring_seconds"] for role in ROLES]
            line += (f" (wall {r['train_wall_seconds']['video'] / 60:.1f} / {r['train_wall_seconds']['twin'] / 60:.1f}"
                     " min; scoring " + " / ".join(
                         f"{s['matching_acceptance'] / 60:.1f} + {s['matching_photos'] / 60:.1f} + "
                         f"{s['tracking'] / 60:.1f} min" for s in seconds)
                     + f" at {r['models']['video']['threads']} thread(s); load average after "
                     f"{r['load_average_after'][0]:.1f})")
        lines.append(line)
    return "\n".join(lines) + "\n"


def run_v4(args: argparse.Namespace, command: str) -> None:
    from difftrack.io import atomic_path, json_safe, write_json

    rows_dir, out = Path(args.rows_dir), Path(args.out) / "screening-v4"
    names = args.rows or list(V4_ROWS)
    if args.show_commands:
        commands = [cmd for name in names for cmd in v4_commands(name, rows_dir).values()]
        if args.long_run:
            commands += long_run_commands(Path(args.long_run)).values()
        for cmd in commands:
            print(" ".join(cmd))
        return
    if not Path(args.photo_clips).exists():
        raise UserError(f"no photo clips at {args.photo_clips}; make them with "
                        f"python benchmarks/make_photo_clips.py --out runs/photo_clips")
    if args.train:
        for name in names:
            unfinished = {role: cmd for role, cmd in v4_commands(name, rows_dir).items()
                          if not model_finished(rows_dir / name / role)}
            if unfinished:
                print(f"[{time.strftime('%H:%M:%S')}] {name}: training {', '.join(unfinished)}", flush=True)
                train_side_by_side(unfinished, rows_dir / name, niceness=19)
    acceptance, photos = load_clips(args.acceptance_clips), PhotoClips(Path(args.photo_clips))
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        row_file = out / f"{name}.json"
        if row_file.is_file():
            print(f"{name}: scored already ({row_file})")
        elif not row_finished(rows_dir, name):
            print(f"{name}: not finished training, not scored")
        else:
            write_json(row_file, json_safe(score_v4_row(name, rows_dir, acceptance, photos)))
    shipped_file, long_file = out / f"{SHIPPED_ROW}.json", out / f"{LONG_ROW}.json"
    if not shipped_file.is_file():
        write_json(shipped_file, json_safe(score_shipped(acceptance, photos)))
    if args.long_run and not long_file.is_file():
        long_dir = Path(args.long_run)
        if all(model_finished(long_dir / role) for role in ROLES):
            write_json(long_file, json_safe(score_long_run(long_dir, acceptance, photos)))
        else:
            print(f"{LONG_ROW}: not finished training, not scored")
    scored = {name: json.loads((out / f"{name}.json").read_text()) for name in (SHIPPED_ROW, LONG_ROW, *V4_ROWS)
              if (out / f"{name}.json").is_file()}
    tracking_baselines = photos.tracking_baselines()
    write_json(out / "tracking_baselines.json", json_safe({"photo_clips": photos.source,
                                                           "protocol": TRACKING_PROTOCOL, **tracking_baselines}))
    table = Path(args.out) / "screening-v4.md"
    with atomic_path(table) as tmp:
        tmp.write_text(v4_markdown(rows_dir, scored, tracking_baselines, {
            "acceptance": clips_description(acceptance["video"]),
            "photos": clips_description([entry["video"] for entry in photos.entries])}, command))
    print(table.read_text())


# ----- arguments --------------------------------------------------------------------------------------------------

RECIPE_OPTIONS = {"runs": "runs/screening", "minutes": 15.0, "recipes": list(RECIPES)}
V4_OPTIONS = ("rows", "train", "show_commands", "photo_clips", "long_run")


def parse_args(argv) -> argparse.Namespace:
    from difftrack.options import number, output_dir

    p = OneLineErrorParser(prog="python studies/embedded_screening.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=output_dir, default="results/embedded")
    p.add_argument("--acceptance-clips", default=str(FROZEN_CLIPS), help="the frozen acceptance clips (default: "
                                                                         "benchmarks/data/acceptance_clips.npz)")
    recipes = p.add_argument_group("the recipe screening (the default)")
    recipes.add_argument("--runs", type=output_dir, help="models and checkpoints of every recipe (default "
                                                         f"{RECIPE_OPTIONS['runs']})")
    recipes.add_argument("--minutes", type=number(min=0, min_inclusive=False),
                         help="minutes of the v2 recipe per model, at one thread beside a second job (default 15)")
    recipes.add_argument("--recipes", nargs="+", choices=list(RECIPES))
    recipes.add_argument("--no-bf16", action="store_true",
                         help="train in fp32 (on CPUs without native bf16, where autocast is emulated and ~10x "
                              "slower); the same steps as a bf16 screening, so compare rows only within one --out")
    v4 = p.add_argument_group("the v4 screening")
    v4.add_argument("--rows-dir", type=output_dir, help="models and checkpoints of every row (runs/screening-v4)")
    v4.add_argument("--rows", nargs="+", choices=list(V4_ROWS), help="rows to train or score (default all)")
    v4.add_argument("--train", action="store_true", help="train the unfinished rows first (otherwise only score)")
    v4.add_argument("--show-commands", action="store_true", help="print the rows' training commands and stop")
    v4.add_argument("--photo-clips", help=f"the frozen photo clips' TAP-Vid pickle or its folder (default "
                                          f"{PHOTO_CLIPS})")
    v4.add_argument("--long-run", type=output_dir,
                    help=f"the folder of the winner's long run (runs/v4-long): score it as row {LONG_ROW} once its "
                         "video model and twin have finished (--show-commands prints its commands)")
    args = p.parse_args(argv)
    if not Path(args.acceptance_clips).is_file():
        raise UserError(f"no acceptance clips at {args.acceptance_clips}")
    if args.rows_dir is None:
        given = [name for name in V4_OPTIONS if getattr(args, name)]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} is an option of the v4 screening (--rows-dir)")
        for name, default in RECIPE_OPTIONS.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
    else:
        given = [name for name in (*RECIPE_OPTIONS, "no_bf16") if getattr(args, name)]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} is an option of the recipe screening, not of --rows-dir")
        args.photo_clips = args.photo_clips or PHOTO_CLIPS
    return args


def run(args: argparse.Namespace, command: str) -> None:
    if args.rows_dir is None:
        run_recipes(args, command)
    else:
        run_v4(args, command)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The command as it ran: its threads and niceness decide its times.
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    niceness = f"nice -n {os.nice(0)} " if os.nice(0) else ""
    command = f"{threads}{niceness}python studies/embedded_screening.py " + " ".join(argv)
    return run_reporting_errors(lambda a: run(parse_args(a), command), argv, debug=False)


if __name__ == "__main__":
    sys.exit(main())
