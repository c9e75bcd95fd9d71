"""none / CFG / CAG on the same seeds: temporal consistency and quality guard, paired differences.

For each seed s (prompt: the caption of held-out generator clip 10000 + s, so every guidance mode
sees the same prompt and the same initial noise) the three guidance modes generate one video each;
every video is scored with difftrack.evaluation.temporal_metrics against the no-guidance video of
its seed. Paired differences (CAG - CFG, CAG - none, CFG - none) per metric are summarised by mean,
standard deviation and a 95% t-interval over seeds.

Writes OUT/summary.json (config, per-seed metrics, aggregates, timings), OUT/summary.md (the
table) and OUT/side_by_side_seed{S}.mp4 (none | CFG | CAG of one seed).

    nice -n 19 python studies/cag.py --model tiny-video --seeds 16 --steps 20 --out results/cag
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import difftrack
from difftrack.data.synthetic import generate_clip
from difftrack.evaluation import temporal_metrics
from difftrack.evaluation.seeds import PROMPT_SEED_START
from difftrack.guidance import GuidanceConfig
from difftrack.io import atomic_path, write_json, write_video
from difftrack.options import add_device_arguments
from difftrack.sampling import sample

MODES = ("none", "cfg", "cag")
PAIRS = (("cag", "cfg"), ("cag", "none"), ("cfg", "none"))
# (metric, which direction is better) - the guard metrics have no "better", they flag frozen or blurred output.
METRICS = {"warp_error": "lower", "acceleration": "lower", "tracked_fraction": "higher", "flow_magnitude": "guard",
           "frame_change": "guard", "sharpness": "guard", "sharpness_ratio_to_reference": "guard",
           "difference_to_reference": "guard"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-video")
    add_device_arguments(p)
    p.add_argument("--seeds", type=int, default=16, help="number of seeds (0 .. N-1)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg-scale", type=float, default=6.0)
    p.add_argument("--cag-scale", type=float, default=1.0)
    p.add_argument("--cag-layers", type=int, nargs="+", default=None,
                   help="default: the model's default CAG layers (Backbone.default_cag_layers)")
    p.add_argument("--layer-source", default="",
                   help="free text recorded in the JSON saying why these layers were chosen")
    p.add_argument("--side-by-side-seed", type=int, default=0)
    p.add_argument("--out", default="results/cag")
    return p.parse_args(argv)


def summarise(values: np.ndarray) -> dict:
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n)) if n > 1 else float("nan")
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def side_by_side(videos: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """Videos next to each other with a label band on top, upscaled so the labels are legible."""
    import cv2

    scale = max(1, 192 // videos[0].shape[1])
    panels = []
    for video, label in zip(videos, labels):
        big = np.stack([cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) for f in video])
        band = np.zeros((len(big), 24, big.shape[2], 3), np.uint8)
        for frame in band:
            cv2.putText(frame, label, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        panels.append(np.concatenate([band, big], axis=1))
    return np.concatenate(panels, axis=2)


def markdown(summary: dict) -> str:
    cfg = summary["config"]
    lines = [f"# CAG benchmark: {cfg['model']}", "",
             f"{cfg['seeds']} seeds, {cfg['steps']} steps, w_cfg = {cfg['cfg_scale']}, s_cag = {cfg['cag_scale']}, "
             f"CAG layers {cfg['cag_layers']} ({cfg['layer_source']}); "
             f"{cfg['frames']} frames at {cfg['width']}x{cfg['height']}.", "",
             "Per mode: mean (std) over seeds. Paired differences: mean [95% CI] over seeds.", "",
             "| metric | better | none | cfg | cag | cag - cfg | cag - none | cfg - none |",
             "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
    for metric, better in METRICS.items():
        row = [metric, better]
        for mode in MODES:
            s = summary["per_mode"][mode][metric]
            row.append(f"{fmt(s['mean'])} ({fmt(s['std'])})")
        for a, b in PAIRS:
            s = summary["paired"][f"{a}-{b}"][metric]
            ci = "n/a" if s["ci95"] is None else f"[{fmt(s['ci95'][0])}, {fmt(s['ci95'][1])}]"
            row.append(f"{fmt(s['mean'])} {ci}")
        lines.append("| " + " | ".join(row) + " |")
    t = summary["seconds_per_video"]
    lines += ["", "Seconds per video: " + ", ".join(f"{m} {t[m]:.1f}" for m in MODES), "",
              "difference_to_reference is the mean absolute frame difference to the no-guidance video of the same "
              "seed (0 for none by definition); sharpness is the Laplacian variance; frame_change the mean absolute "
              "difference between consecutive frames (a frozen video scores 0)."]
    return "\n".join(lines) + "\n"


def summarise_run(args, model: str, layers: list[int], size: tuple[int, int, int], per_seed: list[dict],
                  seconds: dict) -> dict:
    frames, height, width = size
    return {
        "config": {"model": model, "seeds": len(per_seed), "seeds_requested": args.seeds, "steps": args.steps,
                   "cfg_scale": args.cfg_scale, "cag_scale": args.cag_scale, "cag_layers": layers,
                   "layer_source": args.layer_source or "default", "frames": frames, "height": height,
                   "width": width, "prompt_source": f"generate_clip({PROMPT_SEED_START} + seed).caption",
                   "difftrack_version": difftrack.__version__, "command": " ".join(sys.argv)},
        "per_mode": {mode: {m: summarise([s["metrics"][mode][m] for s in per_seed]) for m in METRICS}
                     for mode in MODES},
        "paired": {f"{a}-{b}": {m: summarise([s["metrics"][a][m] - s["metrics"][b][m] for s in per_seed])
                                for m in METRICS} for a, b in PAIRS},
        "seconds_per_video": {m: float(np.mean(v)) for m, v in seconds.items()},
        "per_seed": per_seed,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if not 0 <= args.side_by_side_seed < args.seeds:
        raise SystemExit(f"error: --side-by-side-seed must be one of the seeds 0..{args.seeds - 1}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backbone = difftrack.create_backbone(args.model, device=args.device, dtype=args.dtype)
    layers = backbone.check_layers(args.cag_layers) if args.cag_layers else backbone.default_cag_layers()
    configs = {"none": GuidanceConfig("none"), "cfg": GuidanceConfig("cfg", args.cfg_scale),
               "cag": GuidanceConfig("cag", args.cfg_scale, args.cag_scale, tuple(layers))}
    frames, height, width = backbone.generation_size()
    per_seed, seconds = [], {m: [] for m in MODES}
    bar = tqdm(total=args.seeds * len(MODES), desc="videos", unit="video")
    for seed in range(args.seeds):
        prompt = generate_clip(PROMPT_SEED_START + seed).caption
        videos = {}
        for mode in MODES:
            start = time.perf_counter()
            videos[mode] = np.asarray(sample(backbone, prompt, frames, height, width, num_steps=args.steps,
                                             seed=seed, guidance=configs[mode], output="uint8", progress=False))
            seconds[mode].append(time.perf_counter() - start)
            bar.update(1)
        metrics = {mode: temporal_metrics(videos[mode], reference=videos["none"]) for mode in MODES}
        per_seed.append({"seed": seed, "prompt": prompt, "metrics": metrics})
        if seed == args.side_by_side_seed:
            write_video(out / f"side_by_side_seed{seed}.mp4",
                        side_by_side([videos[m] for m in MODES], ["none", "CFG", "CAG"]), fps=4)
        # Written after every seed, so an interrupted run leaves a consistent summary of the seeds done.
        summary = summarise_run(args, backbone.name, layers, (frames, height, width), per_seed, seconds)
        write_json(out / "summary.json", summary)
        with atomic_path(out / "summary.md") as tmp:
            tmp.write_text(markdown(summary))
    bar.close()
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
