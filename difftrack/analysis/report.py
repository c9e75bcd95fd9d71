"""The analysis report directory: results.json, CSVs, recommendation.json, PNG figures and index.html.

Every file goes through :func:`difftrack.io.atomic_path`, so an interrupted report leaves complete
files or none. Figures are matplotlib PNGs (Agg backend, small DPI) so the directory stays small
enough to commit.
"""

from __future__ import annotations

import csv
import html
import warnings
from pathlib import Path

import numpy as np

import difftrack
from difftrack.analysis.metrics import BASELINE_METRICS, METRIC_LABELS, METRICS
from difftrack.analysis.ranking import aggregate, rank
from difftrack.drawing import pyplot, save_figure
from difftrack.formatting import count_noun, format_number
from difftrack.io import atomic_path, json_safe, write_json

DPI = 80
METHOD_NOTE = (
    "Generated videos are measured on the very sampling run that produced them: descriptors (queries and keys "
    "after q/k norm and RoPE, conditional CFG branch, and the attention output before to_out as the feature "
    "baseline) are captured at the requested (layer, step) pairs and reduced on the fly - per frame-0 query point "
    "and latent frame only the refined correspondence and the joint-attention max and mass are kept - so nothing is "
    "replayed and nothing dense is stored. The finished video is then labelled at exactly those query points "
    "(token centres) and scored. Real videos and generator clips are encoded and, per step, noised (or kept clean "
    "or inverted) and run once with an empty prompt, one branch, up to the deepest requested layer.")


def findings(means: dict[str, np.ndarray], layers: list[int], steps: list[int], accuracy: str) -> dict:
    """The paper's three claims, measured on the aggregated tables (numbers, not verdicts by fiat)."""
    feat = accuracy.replace("qk_", "feat_", 1)
    qk, out = means[accuracy], {}
    if feat in means and np.isfinite(means[feat]).any():
        fa = means[feat]
        both = np.isfinite(qk) & np.isfinite(fa)
        out["qk_vs_features"] = {
            "metric": accuracy, "best_qk": float(np.nanmax(qk)), "best_feature": float(np.nanmax(fa)),
            "mean_qk": float(np.nanmean(qk)), "mean_feature": float(np.nanmean(fa)),
            "cells_qk_better": int((qk[both] > fa[both]).sum()), "cells": int(both.sum()),
            "holds": bool(np.nanmax(qk) > np.nanmax(fa))}
    per_layer = np.nanmax(qk, axis=1)
    order = np.argsort(-np.nan_to_num(per_layer, nan=-1), kind="stable")
    top = max(1, round(len(layers) * 0.2))
    spread = float(np.nanmax(per_layer) - np.nanmin(per_layer)) if len(layers) > 1 else 0.0
    out["few_layers_dominate"] = {
        "best_per_layer": {str(layers[i]): float(per_layer[i]) for i in range(len(layers))},
        "top_layers": [layers[i] for i in order[:top] if np.isfinite(per_layer[i])],
        "top_mean": float(np.nanmean(per_layer[order[:top]])),
        "rest_mean": float(np.nanmean(per_layer[order[top:]])) if len(layers) > top else None,
        "median_layer": float(np.nanmedian(per_layer)), "spread": spread}
    if len(steps) > 1:
        best_layer = int(order[0])
        row = qk[best_layer]
        avg = np.nanmean(qk, axis=0)
        finite = np.isfinite(row)
        rho = None
        if finite.sum() > 2 and np.ptp(row[finite]) > 0:
            from scipy.stats import spearmanr

            rho = float(spearmanr(np.asarray(steps)[finite], row[finite]).statistic)
        out["rises_as_noise_falls"] = {
            "layer": layers[best_layer], "first_step": steps[0], "last_step": steps[-1],
            "best_layer_first": float(row[0]), "best_layer_last": float(row[-1]),
            "layer_mean_first": float(avg[0]), "layer_mean_last": float(avg[-1]),
            "spearman_step_vs_accuracy_best_layer": rho,
            "holds": bool(row[-1] > row[0] and avg[-1] > avg[0])}
    return out


def write_report(out: Path, records: list[dict], backbone, config, layers: list[int], steps: list[int],
                 accuracy: str, top: int, figures_path: Path | None = None) -> dict:
    from dataclasses import asdict

    agg = aggregate([{n: r["metrics"][n] for n in r["metrics"]} for r in records])
    means = {name: t["mean"] for name, t in agg.items()}
    ranked = rank(means, layers, steps, accuracy, top=top)
    timesteps = [float(t) for t in backbone.timesteps(config.num_steps)]
    with warnings.catch_warnings():  # all-NaN tables (no visible ground truth) give None findings, not noise
        warnings.simplefilter("ignore", RuntimeWarning)
        found = findings(means, layers, steps, accuracy)
    results = {
        "model": backbone.name, "difftrack_version": difftrack.__version__, "config": asdict(config),
        "layers": layers, "steps": steps, "num_steps": config.num_steps,
        "timesteps": [timesteps[s] for s in steps], "accuracy_metric": accuracy,
        "metric_labels": METRIC_LABELS, "videos": records,
        "aggregate": {name: {k: v.tolist() for k, v in t.items()} for name, t in agg.items()},
        "harmonic_score": ranked["score"].tolist(), "ranking": ranked["ranking"][:20], "findings": found,
        "method": METHOD_NOTE,
    }
    recommendation = {"model": backbone.name, "layers": ranked["layers"], "steps": ranked["steps"],
                      "num_steps": config.num_steps,
                      "metric": f"harmonic mean of min-max normalised {accuracy}, conf_cross, attn_cross",
                      "videos": len(records)}
    write_json(out / "results.json", json_safe(results))
    if ranked["layers"]:
        write_json(out / "recommendation.json", recommendation)
    else:  # one left by an earlier run would be read by `--layers auto` as this run's
        (out / "recommendation.json").unlink(missing_ok=True)
    _write_csvs(out, records, agg, ranked, layers, steps)
    figures = _write_figures(out, means, agg, ranked["score"], layers, steps, accuracy, figures_path)
    _write_index(out, results, recommendation, figures)
    return results


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)


def _csv_number(v) -> str:
    return format_number(v, ".6g", missing="")


def _write_csvs(out, records, agg, ranked, layers, steps):
    names = list(agg)
    rows = []
    for i, layer in enumerate(layers):
        for j, step in enumerate(steps):
            row = [layer, step, _csv_number(ranked["score"][i, j])]
            for n in names:
                row += [_csv_number(agg[n]["mean"][i, j]), _csv_number(agg[n]["std"][i, j]), int(agg[n]["count"][i, j])]
            rows.append(row)
    header = ["layer", "step", "harmonic_score"] + [f"{n}_{k}" for n in names for k in ("mean", "std", "count")]
    _write_csv(out / "aggregate.csv", header, rows)
    rows = []
    for r in records:
        for i, layer in enumerate(layers):
            for j, step in enumerate(steps):
                rows.append([r["id"], layer, step] + [_csv_number(r["metrics"][n][i][j]) for n in names])
    _write_csv(out / "per_video.csv", ["video", "layer", "step"] + names, rows)
    _write_csv(out / "ranking.csv", ["rank", "layer", "step", "score"],
               [[k + 1, e["layer"], e["step"], _csv_number(e["score"])] for k, e in enumerate(ranked["ranking"])])


def _write_figures(out, means, agg, score, layers, steps, accuracy, figures_path) -> list[tuple[str, str]]:
    plt = pyplot()
    made: list[tuple[str, str]] = []
    # no heatmap of the no-motion baseline: it is one value per video, the same in every cell (index.html gives it)
    tables = [(n, means[n]) for n in METRICS if n in means] + [("harmonic_score", score)]
    for name, table in tables:
        fig, ax = plt.subplots(figsize=(1.6 + 0.32 * len(steps), 1.2 + 0.28 * len(layers)))
        im = ax.imshow(table, aspect="auto", cmap="viridis", origin="upper")
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=7, rotation=90 if len(steps) > 12 else 0)
        ax.set_yticks(range(len(layers)), [str(l) for l in layers], fontsize=7)
        ax.set_xlabel("denoising step (noisy -> clean)")
        ax.set_ylabel("layer")
        label = "harmonic-mean rank score" if name == "harmonic_score" else METRIC_LABELS.get(name, name)
        ax.set_title(label, fontsize=8)
        fig.colorbar(im, ax=ax)
        save_figure(fig, out / f"heatmap_{name}.png", dpi=DPI)
        made.append((f"heatmap_{name}.png", f"Layer x step heatmap: {label}. Mean over videos."))

    thr = accuracy.split("_", 1)[1]
    pair = [(f"qk_{thr}", "query-key"), (f"feat_{thr}", "features")]
    pair = [(n, t) for n, t in pair if n in means]
    for axis_name, along in (("step", 1), ("layer", 0)):
        fig, axes = plt.subplots(1, len(pair), figsize=(4.2 * len(pair), 3.2), sharey=True, squeeze=False)
        xs = steps if along == 1 else layers
        series = layers if along == 1 else steps
        for ax, (name, title) in zip(axes[0], pair):
            m, s = agg[name]["mean"], agg[name]["std"]
            for k, label in enumerate(series):
                y = m[k] if along == 1 else m[:, k]
                e = s[k] if along == 1 else s[:, k]
                ax.errorbar(xs, y, yerr=e, marker="o", ms=3, capsize=2, lw=1,
                            label=f"{'layer' if along == 1 else 'step'} {label}")
            ax.set_title(f"{title} ({METRIC_LABELS[name].split('(')[1].rstrip(')')})", fontsize=8)
            ax.set_xlabel(axis_name)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("matching accuracy")
        axes[0][-1].legend(fontsize=6, ncol=2 if len(series) > 8 else 1)
        save_figure(fig, out / f"accuracy_vs_{axis_name}.png", dpi=DPI)
        made.append((f"accuracy_vs_{axis_name}.png",
                     f"Matching accuracy versus {axis_name}, query-key (left) and intermediate features (right); "
                     f"mean over videos, bars = one standard deviation."))

    if figures_path is not None and Path(figures_path).is_file():
        made += _write_attention_figures(out, figures_path, plt)
    return made


def _write_attention_figures(out, figures_path, plt) -> list[tuple[str, str]]:
    made = []
    with np.load(figures_path, allow_pickle=False) as data:
        fig_data = {k: data[k] for k in data.files}
    layers = fig_data["layers"].tolist()
    step = int(fig_data["step"])
    images, rgb = fig_data["images"], fig_data["rgb_frames"].tolist()
    h, w = images.shape[1:3]
    query, truth, truth_vis = fig_data["query_px"], fig_data["truth_px"], fig_data["truth_visible"]
    n_pts = len(query)
    if n_pts and any(f"attention_maps_{l}" in fig_data for l in layers):
        colours = plt.cm.tab10(np.arange(n_pts))
        fig, axes = plt.subplots(len(layers), len(rgb), figsize=(2.0 * len(rgb), 2.0 * len(layers)), squeeze=False)
        for r, layer in enumerate(layers):
            maps = fig_data[f"attention_maps_{layer}"]  # (n, frames, gh, gw)
            pred = fig_data[f"qk_px_{layer}"]  # (n, frames, 2)
            for c, frame in enumerate(rgb):
                ax = axes[r][c]
                ax.imshow(images[c], extent=(0, w, h, 0))
                ax.imshow(maps[:, c].sum(0), extent=(0, w, h, 0), cmap="magma", alpha=0.55)
                for p in range(n_pts):
                    if c == 0:
                        ax.plot(*query[p], "o", color=colours[p], ms=5, mec="white")
                    else:
                        ax.plot(*pred[p, c], "x", color=colours[p], ms=6, mew=2)
                        if truth_vis[c, p]:
                            ax.plot(*truth[c, p], "o", color=colours[p], ms=5, mfc="none", mew=1.5)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"RGB frame {frame}", fontsize=8)
                if c == 0:
                    ax.set_ylabel(f"layer {layer}", fontsize=8)
        save_figure(fig, out / "attention_maps.png", dpi=DPI)
        made.append(("attention_maps.png",
                     f"Attention of {n_pts} frame-0 query points (dots, first column) on later frames at step {step} "
                     f"(head-averaged softmax over each frame's tokens, summed over the points), one row per layer; "
                     f"crosses = predicted correspondence, rings = ground truth (first video of the run)."))
    pcas = [(l, fig_data.get(f"pca_q_{l}"), fig_data.get(f"pca_k_{l}")) for l in layers]
    pcas = [p for p in pcas if p[1] is not None]
    if pcas:
        frames = pcas[0][1].shape[0]
        fig, axes = plt.subplots(len(pcas), 2 * frames, figsize=(1.5 * 2 * frames, 1.6 * len(pcas)), squeeze=False)
        for r, (layer, pq, pk) in enumerate(pcas):
            for kind, arr, offset in (("q", pq, 0), ("k", pk, frames)):
                lo, hi = arr.reshape(-1, 3).min(0), arr.reshape(-1, 3).max(0)
                rgb_img = (arr - lo) / np.where(hi - lo > 0, hi - lo, 1)
                for c in range(frames):
                    ax = axes[r][offset + c]
                    ax.imshow(rgb_img[c], interpolation="nearest")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if r == 0:
                        ax.set_title(f"{kind}, RGB frame {rgb[c]}", fontsize=7)
                    if offset + c == 0:
                        ax.set_ylabel(f"layer {layer}", fontsize=8)
        save_figure(fig, out / "pca_qk.png", dpi=DPI)
        made.append(("pca_qk.png", f"First three principal components of the queries (left) and keys (right) of "
                                   f"every token, as RGB, per layer at step {step}; one PCA per layer and descriptor "
                                   f"over the shown frames (first video of the run)."))
    return made


def _write_index(out: Path, results: dict, recommendation: dict, figures: list[tuple[str, str]]) -> None:
    esc = html.escape
    f = results["findings"]
    items = []
    if "qk_vs_features" in f:
        q = f["qk_vs_features"]
        items.append(f"q-k vs features ({esc(q['metric'])}): best cell {format_number(q['best_qk'])} vs "
                     f"{format_number(q['best_feature'])}, table mean {format_number(q['mean_qk'])} vs "
                     f"{format_number(q['mean_feature'])}; q-k higher in {q['cells_qk_better']} of {q['cells']} cells.")
    d = f["few_layers_dominate"]
    per_layer = ", ".join(f"layer {layer} {format_number(value)}" for layer, value in d["best_per_layer"].items())
    items.append(f"Layers: best accuracy per layer: {esc(per_layer)}; top layers {d['top_layers']} "
                 f"average {format_number(d['top_mean'])}, median layer {format_number(d['median_layer'])}.")
    if "rises_as_noise_falls" in f:
        r = f["rises_as_noise_falls"]
        rho = format_number(r["spearman_step_vs_accuracy_best_layer"], ".2f")
        items.append(f"Noise: layer {r['layer']} goes from {format_number(r['best_layer_first'])} at step "
                     f"{r['first_step']} to {format_number(r['best_layer_last'])} at step {r['last_step']} (mean over "
                     f"layers {format_number(r['layer_mean_first'])} -> {format_number(r['layer_mean_last'])}); "
                     f"Spearman(step, accuracy) = {rho}.")
    zero = []
    for m in BASELINE_METRICS:
        # the baseline does not depend on layer or step: one value per video
        values = [v["metrics"][m][0][0] for v in results["videos"] if m in v["metrics"]]
        values = [x for x in values if x is not None and np.isfinite(x)]
        if values:
            zero.append(f"{m}: {np.mean(values):.3f}")
    if zero:
        items.append("No-motion baseline (every point stays put): " + ", ".join(zero) +
                     "; compare the *_moved accuracies, where this baseline scores 0.")
    videos = "".join(f"<tr><td>{esc(v['id'])}</td><td>{esc(str(v.get('prompt') or v.get('path') or v.get('seed')))}"
                     f"</td><td>{v['frames']}x{v['height']}x{v['width']}</td><td>{v['points']}</td>"
                     f"<td>{v['visible_fraction']:.2f}</td><td>{v['seconds']}</td></tr>" for v in results["videos"])
    top_rows = "".join(f"<tr><td>{k + 1}</td><td>{e['layer']}</td><td>{e['step']}</td><td>{e['score']:.3f}</td></tr>"
                       for k, e in enumerate(results["ranking"][:10]))
    figs = "".join(f'<figure><img src="{esc(name)}" alt="{esc(name)}"><figcaption>{esc(caption)}</figcaption></figure>'
                   for name, caption in figures)
    if recommendation["layers"]:
        advice = (f"layers {recommendation['layers']} at step {recommendation['steps']} of "
                  f"{recommendation['num_steps']} (<a href=\"recommendation.json\">recommendation.json</a>; "
                  f"{esc(recommendation['metric'])}).")
    else:
        advice = ("none: no layer and step has a score (no ground-truth point was visible on two frames to match), "
                  "so no recommendation.json was written.")
    cfg = results["config"]
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>difftrack analysis: {esc(results['model'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}figure{{display:inline-block;margin:8px;
vertical-align:top;max-width:520px}}img{{max-width:100%}}figcaption{{font-size:12px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px}}</style></head><body>
<h1>Temporal correspondence analysis: {esc(results['model'])}</h1>
<p>{count_noun(len(results['videos']), 'video')}; layers {results['layers']}; steps {results['steps']} of {results['num_steps']}
(step 0 = noisiest); labeller {esc(cfg['labeller'])}; query grid {cfg['grid']}x{cfg['grid']} on frame 0; ranking
accuracy metric <code>{esc(results['accuracy_metric'])}</code>. Accuracy is PCK of the refined correspondence over
ground-truth-visible points; <code>pck</code> = 8 px at 480x720 scaled to the video's resolution,
<code>pck_token</code> = half a token. Full numbers: <a href="results.json">results.json</a>,
<a href="aggregate.csv">aggregate.csv</a>, <a href="per_video.csv">per_video.csv</a>.</p>
<h2>Method</h2><p>{esc(METHOD_NOTE)}</p>
<h2>Findings</h2><ul>{''.join(f'<li>{i}</li>' for i in items)}</ul>
<h2>Recommendation</h2><p>{advice}</p>
{f"<table><tr><th>rank</th><th>layer</th><th>step</th><th>score</th></tr>{top_rows}</table>" if top_rows else ""}
<h2>Figures</h2>{figs}
<h2>Videos</h2><table><tr><th>id</th><th>prompt / source</th><th>frames x H x W</th><th>points</th>
<th>visible</th><th>seconds</th></tr>{videos}</table>
</body></html>
"""
    with atomic_path(out / "index.html", suffix=".html") as tmp:
        tmp.write_text(page)
