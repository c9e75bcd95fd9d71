"""Feature pictures: 3-component PCA as RGB and K-means cluster maps, per frame, as PNG strips and MP4.

PCA and K-means are fitted jointly on the tokens of ALL frames, so a colour means the same thing in
every frame: if features follow the content, colours move with it; if they encode position only,
the picture stands still while the video moves (the control "a camera pans over a uniform brick
wall").

``track_consistency`` puts a number on that: for a grid of points tracked exactly by the
generator, the fraction of frames in which a point's cluster equals its frame-0 cluster. Features
that move with the content score high; features frozen to screen positions score as high as the
chance that a moved point lands in the same cluster.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from difftrack.drawing import label_colours, upscale

KMEANS_CLUSTERS = 10


def pca_rgb(feature_map: np.ndarray) -> np.ndarray:
    """Features (T, h, w, C) -> uint8 (T, h, w, 3): the first three principal components as R, G, B,
    each stretched from its 1st to its 99th percentile over all frames."""
    num_frames, h, w, channels = feature_map.shape
    x = torch.as_tensor(feature_map.reshape(-1, channels), dtype=torch.float64)
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    proj = x @ v[:3].T
    # SVD signs are arbitrary: orient each component so that its most extreme token is positive.
    proj = (proj * torch.sign(proj[proj.abs().argmax(0), torch.arange(proj.shape[1])])).numpy()
    if proj.shape[1] < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return (rgb * 255 + 0.5).astype(np.uint8).reshape(num_frames, h, w, 3)


def kmeans(x: np.ndarray, k: int = KMEANS_CLUSTERS, iterations: int = 50, seed: int = 0) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding on rows of ``x`` (n, C) -> cluster ids (n,), ordered by size."""
    data = torch.as_tensor(x, dtype=torch.float64)
    n = len(data)
    k = min(k, n)
    gen = torch.Generator().manual_seed(seed)
    centres = [data[torch.randint(n, (1,), generator=gen)].squeeze(0)]
    dist = (data - centres[0]).square().sum(1)
    for _ in range(1, k):
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)
        centres.append(data[torch.multinomial(probs, 1, generator=gen)].squeeze(0))
        dist = torch.minimum(dist, (data - centres[-1]).square().sum(1))
    c = torch.stack(centres)
    labels = torch.cdist(data, c).argmin(1)
    for _ in range(iterations):
        for j in range(k):
            members = labels == j
            if members.any():
                c[j] = data[members].mean(0)
        new = torch.cdist(data, c).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    # Relabel by decreasing size so colours do not depend on the seeding order.
    order = torch.argsort(torch.bincount(labels, minlength=k), descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(k)
    return rank[labels].numpy()


def cluster_map(feature_map: np.ndarray, k: int = KMEANS_CLUSTERS, seed: int = 0) -> np.ndarray:
    """Features (T, h, w, C) -> cluster ids (T, h, w) of a K-means fitted on every frame's tokens together."""
    num_frames, h, w, channels = feature_map.shape
    feats = torch.nn.functional.normalize(torch.as_tensor(feature_map.reshape(-1, channels)).double(), dim=1)
    return kmeans(feats.numpy(), k, seed=seed).reshape(num_frames, h, w)


def picture_rows(video: np.ndarray, feature_map: np.ndarray, k: int = KMEANS_CLUSTERS, seed: int = 0,
                 scale: int = 4) -> dict[str, np.ndarray]:
    """uint8 frames (T, H * scale, W * scale, 3) of the video, its PCA picture and its cluster map."""
    height, width = video.shape[1:3]
    size = (height * scale, width * scale)
    return {"video": upscale(video, size), "pca": upscale(pca_rgb(feature_map), size),
            "kmeans": upscale(label_colours(cluster_map(feature_map, k, seed), k), size)}


def strip(rows: list[np.ndarray], labels: list[str] | None = None, gap: int = 2) -> np.ndarray:
    """Rows of frames (each (T, h, w, 3)) -> one image: frames left to right, rows top to bottom, white gaps,
    and each row's label (if given) in a white margin on the left."""
    import cv2

    lines = []
    for i, frames in enumerate(rows):
        pad = np.full((frames.shape[1], gap, 3), 255, np.uint8)
        pieces = [p for f in frames for p in (f, pad)][:-1]
        if labels is not None:
            margin = np.full((frames.shape[1], 200, 3), 255, np.uint8)
            cv2.putText(margin, labels[i][:24], (4, frames.shape[1] // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (0, 0, 0), 1, cv2.LINE_AA)
            pieces = [margin, pad, *pieces]
        lines.append(np.concatenate(pieces, 1))
    width = max(line.shape[1] for line in lines)
    pad_row = np.full((gap, width, 3), 255, np.uint8)
    return np.concatenate([p for line in lines for p in (line, pad_row)][:-1], 0)


def side_by_side(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Rows of frames -> video frames (T, h, sum of widths, 3) with the rows next to each other."""
    pad = np.full((*rows[0].shape[:2], gap, 3), 255, np.uint8)
    return np.concatenate([p for r in rows for p in (r, pad)][:-1], 2)


def track_consistency(cluster_ids: np.ndarray, clip, points_per_side: int | None = None) -> float:
    """Fraction of (point, frame) pairs, over the points of a frame-0 token-centre grid while the generator
    says they are visible, whose cluster at the point's true position equals its frame-0 cluster."""
    num_frames, h, w = cluster_ids.shape
    height, width = clip.size
    n_side = points_per_side or h
    ys, xs = np.meshgrid((np.arange(n_side) + 0.5) / n_side * height, (np.arange(n_side) + 0.5) / n_side * width,
                         indexing="ij")
    queries = np.stack([np.zeros(xs.size), xs.ravel(), ys.ravel()], 1)
    tracks, visible = clip.track(queries)
    cols = np.clip((tracks[..., 0] / width * w).astype(int), 0, w - 1)
    rows = np.clip((tracks[..., 1] / height * h).astype(int), 0, h - 1)
    ids = cluster_ids[np.arange(num_frames)[None], rows, cols]  # (N, T)
    same = (ids[:, 1:] == ids[:, :1]) & visible[:, 1:]
    return float(same.sum() / max(visible[:, 1:].sum(), 1))


def screen_consistency(cluster_ids: np.ndarray) -> float:
    """Fraction of (token, frame) pairs whose cluster equals the same screen position's frame-0 cluster."""
    return float((cluster_ids[1:] == cluster_ids[:1]).mean())


def write_pictures(out_dir: Path, name: str, run_name: str, backbones: list, blocks: list[int], video: np.ndarray, fps: float,
                   clip, kind: str, step: int, num_steps: int, noise: str, seed: int, clusters: int,
                   source: str) -> dict:
    """For each backbone (at its block): PCA and K-means pictures of its ``kind`` features, one strip per
    model and one for all, a side-by-side video and a JSON summary in ``out_dir``; returns the summary
    (consistency of the clusters at the same screen position and, for a generator ``clip``, along its
    true tracks)."""
    from PIL import Image

    from difftrack.io import write_json, write_video
    from difftrack.probe.features import FeatureSpec, check_spec, extract_features

    summary, video_rows, labels = {}, [], []
    for bb, block in zip(backbones, blocks):
        spec = FeatureSpec(blocks=(block,), kinds=(kind,), step=step, num_steps=num_steps, noise=noise, seed=seed)
        check_spec(bb, spec)
        fmap = extract_features(bb, video, spec, progress=True)[(kind, block)]
        rows = picture_rows(video, fmap, clusters, seed)
        model_tag = re.sub(r"[^A-Za-z0-9._-]+", "_", bb.name).strip("_")
        if not video_rows:
            video_rows.append(rows["video"])
            labels.append("video")
        video_rows += [rows["pca"], rows["kmeans"]]
        labels += [f"{model_tag} PCA", f"{model_tag} K-means"]
        Image.fromarray(strip([rows["video"], rows["pca"], rows["kmeans"]], ["video", *labels[-2:]])).save(
            out_dir / f"{name}_{model_tag}_block{block}_step{step}.png")
        ids = cluster_map(fmap, clusters, seed)
        entry = {"block": block, "step": step, "kind": kind, "screen_consistency": screen_consistency(ids)}
        if clip is not None:
            entry["track_consistency"] = track_consistency(ids, clip)
        summary[bb.name] = entry
    Image.fromarray(strip(video_rows, labels)).save(out_dir / f"{run_name}_strip.png")
    write_video(out_dir / f"{run_name}.mp4", side_by_side(video_rows), fps)
    write_json(out_dir / f"{run_name}.json", {"video": source, "rows": labels, "models": summary})
    return summary
