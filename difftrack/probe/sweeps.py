"""Block x noise-level sweeps of every probe task (the ablations feature-probing studies report): records, tables and heat maps.

Outputs in the sweep directory:
- ``sweep.json``: every record (one per model, block and step) plus the no-model references;
- ``sweep.csv``: the same records as rows;
- ``sweep.md``: per task and model a block x step table of the task's headline metric, and the best
  (block, step) per task and model;
- ``best.json``: ``{model: {task: {"block", "step", "timestep", "metric", "value"}}}``;
- ``sweep_<task>.png``: heat maps of the headline metric, one panel per model.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from difftrack.drawing import pyplot, save_figure
from difftrack.formatting import format_number
from difftrack.io import atomic_path, write_json
from difftrack.probe.tasks import HEADLINE, TASK_METRICS


def records_csv(records: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for r in records:
        writer.writerow({k: format_number(r[k]) if k in r else "" for k in keys})
    return buf.getvalue()


def best_settings(records: list[dict], tasks) -> dict:
    """For each model and task, the (block, step) with the highest headline metric (ties: earliest block, step)."""
    out: dict[str, dict] = {}
    for model in dict.fromkeys(r["model"] for r in records if "block" in r):
        rows = [r for r in records if r["model"] == model and "block" in r]
        for task in tasks:
            metric = HEADLINE[task]
            scored = [r for r in rows if not math.isnan(r.get(metric, float("nan")))]
            if not scored:
                continue
            best = max(scored, key=lambda r: (r[metric], -r["block"], -r["step"]))
            out.setdefault(model, {})[task] = {"block": best["block"], "step": best["step"],
                                               "timestep": best["timestep"], "metric": metric,
                                               "value": best[metric]}
    return out


def sweep_markdown(records: list[dict], references: list[dict], tasks, best: dict, num_steps: int) -> str:
    models = list(dict.fromkeys(r["model"] for r in records))
    steps = sorted({r["step"] for r in records})
    blocks = sorted({r["block"] for r in records})
    timestep = {r["step"]: r["timestep"] for r in records}
    lines = ["# Block x noise-level sweep", ""]
    for task in tasks:
        metric = HEADLINE[task]
        lines += [f"## {task}: {metric}", ""]
        for ref in references:
            if metric in ref:
                lines.append(f"Reference without a model, {ref['model']}: {format_number(ref[metric])}")
        lines.append("")
        for model in models:
            lines += [f"{model} (rows: block; columns: step of a {num_steps}-step schedule, t = timestep)", "",
                      "| block | " + " | ".join(f"step {s} (t={timestep[s]:.0f})" for s in steps) + " |",
                      "|---|" + "---|" * len(steps)]
            table = {(r["block"], r["step"]): r for r in records if r["model"] == model}
            for b in blocks:
                cells = [format_number(table[(b, s)].get(metric, float("nan"))) if (b, s) in table else "" for s in steps]
                lines.append(f"| {b} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## Best block and noise level per task", "", "| model | task | metric | block | step | timestep | value |",
              "|---|---|---|---|---|---|---|"]
    for model, per_task in best.items():
        for task, b in per_task.items():
            lines.append(f"| {model} | {task} | {b['metric']} | {b['block']} | {b['step']} | {b['timestep']:.0f} | "
                         f"{format_number(b['value'])} |")
    return "\n".join(lines) + "\n"


def sweep_figure(records: list[dict], task: str, path: Path) -> None:
    plt = pyplot()
    metric = HEADLINE[task]
    models = list(dict.fromkeys(r["model"] for r in records))
    steps = sorted({r["step"] for r in records})
    blocks = sorted({r["block"] for r in records})
    timestep = {r["step"]: r["timestep"] for r in records}
    values = np.full((len(models), len(blocks), len(steps)), np.nan)
    for r in records:
        values[models.index(r["model"]), blocks.index(r["block"]), steps.index(r["step"])] = r.get(metric, np.nan)
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    fig, axes = plt.subplots(1, len(models), figsize=(1.2 + 1.3 * len(steps) * len(models), 1.2 + 0.45 * len(blocks)),
                             squeeze=False, layout="constrained")
    for ax, model, grid in zip(axes[0], models, values):
        im = ax.imshow(grid, vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto")
        for i in range(len(blocks)):
            for j in range(len(steps)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if grid[i, j] < (vmin + vmax) / 2 else "black")
        ax.set_xticks(range(len(steps)), [f"{s}\nt={timestep[s]:.0f}" for s in steps], fontsize=7)
        ax.set_yticks(range(len(blocks)), blocks, fontsize=7)
        ax.set_xlabel("step (noise level)")
        ax.set_ylabel("block")
        ax.set_title(model, fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=metric)
    fig.suptitle(f"{task}: {metric}", fontsize=10)
    save_figure(fig, path)


def write_sweep(out_dir: Path, records: list[dict], references: list[dict], tasks, meta: dict) -> dict:
    """Write every sweep output; returns the best settings."""
    best = best_settings(records, tasks)
    write_json(out_dir / "sweep.json", {"meta": meta, "records": records, "references": references})
    with atomic_path(out_dir / "sweep.csv") as tmp:
        tmp.write_text(records_csv(records + references))
    with atomic_path(out_dir / "sweep.md") as tmp:
        tmp.write_text(sweep_markdown(records, references, tasks, best, meta["num_steps"]))
    write_json(out_dir / "best.json", best)
    for task in tasks:
        sweep_figure(records, task, out_dir / f"sweep_{task}.png")
    return best


def task_columns(tasks) -> list[tuple[str, str]]:
    return [col for task in tasks for col in TASK_METRICS[task]]
