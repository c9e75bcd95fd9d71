"""Image versus video: the same tasks, block and noise level on a video model and its image twin.

Outputs in the compare directory: ``compare.md`` (the table, the difference row, where video
training helps and where it hurts, and where a model-free reference beats both models), ``compare.csv``
and ``compare.json`` (every record and the setting).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from difftrack.errors import UserError
from difftrack.formatting import format_number
from difftrack.io import atomic_path, write_json
from difftrack.probe.sweeps import records_csv, task_columns


def difference_record(video: dict, image: dict, columns) -> dict:
    return {"model": f"{video['model']} - {image['model']}",
            **{key: video.get(key, math.nan) - image.get(key, math.nan) for key, _ in columns}}


def compare_markdown(video: dict, image: dict, references: list[dict], tasks, setting: dict) -> str:
    columns = task_columns(tasks)
    diff = difference_record(video, image, columns)
    chance = {f"semantic_{t}_acc": video.get(f"semantic_{t}_majority") for t in ("shape", "texture")}
    rows = [video, image, diff, *references]
    if any(v is not None for v in chance.values()):
        rows.append({"model": "majority class (probe chance)", **{k: v for k, v in chance.items() if v is not None}})
    lines = ["# Image versus video", "",
             f"Setting: block {video['block']}, step {video['step']} of {setting['num_steps']} "
             f"(timestep {video['timestep']:.0f}), noise `{setting['noise']}`, seed {setting['seed']}; propagation and "
             f"probe on `{setting['kind']}` activations, tracking on the block's q/k (DiffTracker). "
             f"{setting['eval_videos']} held-out generator videos (seeds {setting['eval_seeds']}), probe trained on "
             f"{setting['train_videos']} others (seeds {setting['train_seeds']}).", "",
             "| model | " + " | ".join(title for _, title in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(format_number(r.get(key, math.nan)) for key, _ in columns) + " |")
    summary = _summary(video, image, diff, references, columns)
    if summary:
        lines += ["", " ".join(summary)]
    return "\n".join(lines) + "\n"


def _summary(video: dict, image: dict, diff: dict, references: list[dict], columns) -> list[str]:
    """Sentences on where video training helps (video minus image > 0), where it hurts, and where a reference
    that needs no model (zero motion, pixels) beats both models; every column is higher-is-better."""
    gains = sorted(((diff[key], title) for key, title in columns if not math.isnan(diff[key])), reverse=True)
    helps = [f"{title} ({d:+.3f})" for d, title in gains if d > 0]
    hurts = [f"{title} ({d:+.3f})" for d, title in reversed(gains) if d < 0]
    out = []
    if helps:
        out.append(f"Video training helps on {', '.join(helps)}.")
    if hurts:
        out.append(f"It hurts on {', '.join(hurts)}: the image twin does better there.")
    if gains:
        out.append("Differences are video minus image, the largest in size first.")
    for reference in references:
        beaten = [f"{title} ({reference[key]:.3f} against {video[key]:.3f} and {image[key]:.3f})"
                  for key, title in columns
                  if all(math.isfinite(r.get(key, math.nan)) for r in (reference, video, image))
                  and reference[key] > max(video[key], image[key])]
        if beaten:
            out.append(f"{reference['model'].capitalize()} beats both models on {', '.join(beaten)}.")
    return out


def write_compare(out_dir: Path, video: dict, image: dict, references: list[dict], tasks, setting: dict) -> str:
    text = compare_markdown(video, image, references, tasks, setting)
    columns = task_columns(tasks)
    with atomic_path(out_dir / "compare.md") as tmp:
        tmp.write_text(text)
    with atomic_path(out_dir / "compare.csv") as tmp:
        tmp.write_text(records_csv([video, image, difference_record(video, image, columns), *references]))
    write_json(out_dir / "compare.json", {"setting": setting, "video": video, "image": image,
                                          "references": references})
    return text


def records_from_sweep(sweep_path, models: list[str], block: int | None, step: int):
    """(sweep.json path, its meta, {model: record at (block, step)}, its references) from a sweep's output
    (the directory or its sweep.json); ``block`` None takes the middle swept block."""
    path = Path(sweep_path)
    path = path / "sweep.json" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"no sweep results at {path}; run `difftrack probe sweep --out DIR` first")
    sweep = json.loads(path.read_text())
    meta, records = sweep["meta"], sweep["records"]
    picked = {}
    for model in models:
        rows = [r for r in records if r["model"] == model]
        if not rows:
            raise UserError(f"the sweep in {path} has no records of {model}; it swept {', '.join(meta['models'])}")
        swept = sorted({r["block"] for r in rows})
        at = block if block is not None else swept[len(swept) // 2]
        match = [r for r in rows if r["block"] == at and r["step"] == step]
        if not match:
            raise UserError(f"the sweep has no record of {model} at block {at}, step {step}; it swept "
                            f"blocks {meta['blocks']} and steps {meta['steps']}")
        picked[model] = match[0]
    return path, meta, picked, sweep["references"]
