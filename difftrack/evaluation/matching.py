"""Model-level matching: do a model's q-k match points across frames, before any tracker?

On clips with exact ground truth (see :func:`clip_targets`), each clip is noised to rectified-flow level s
(x_s = (1 - s) x0 + s noise, the same noise for every model) and run through one forward with the empty
prompt. From frame-0 query tokens to every other frame we take the argmax of the head-averaged per-frame
softmax of q.k (:func:`difftrack.kernels.match`) and count it correct when the predicted token centre is
within one token (Chebyshev, token units) of the true position. Scores are pooled over ground-truth-visible
(point, frame) pairs (:class:`Tally`):

- moved: pairs whose true position is more than one token from the query's own position
  (:func:`~difftrack.evaluation.queries.moved_points`; zero motion scores 0 there by construction);
- all: every visible pair of frames 1..F-1.

Clips come from the generator (:func:`clip_targets`: a query on every other token) or carry tracked points, as
TAP-Vid's clips do (:func:`tracked_targets`: the points visible on frame 0, each queried at the token under it).
Targets are in tokens, so a set scores a model of any input size with the same token grid: each frame is resized to
the model's input size as it is encoded (64x64 clips at 4 pixels a token score a 128x128 model at 8 the same way).

Next to q-k: intermediate features (cosine of the attention output before to_out), zero motion, the
noisy-patch baseline (cosine of the noisy pixels under each token) and classical matchers on the same noisy
input: normalised cross-correlation of the pixels in a window of 1, 3 or 5 tokens around each token. An
image model runs every frame as its own sample, so its q/k come from per-frame forwards.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from difftrack.backbones import create_backbone
from difftrack.capture import DescriptorCapture
from difftrack.errors import UserError
from difftrack.evaluation.queries import moved_points, token_grid
from difftrack.kernels import match

NOISE_LEVELS = (0.0, 0.1, 0.2, 0.5, 0.8)
NCC_WINDOWS = (1, 3, 5)  # tokens
BASELINES = ("zero_motion", "noisy_patch", *(f"ncc_{w}" for w in NCC_WINDOWS))
QUERY_STRIDE = 2  # a query on every other token in each direction: 8x8 queries on a 16x16 grid


class Tally:
    """Correct / total counts over (point, frame) pairs, for moved and for all visible pairs."""

    def __init__(self):
        self.counts = {"moved": [0, 0], "all": [0, 0]}

    def add(self, correct: np.ndarray, moved: np.ndarray, visible: np.ndarray) -> None:
        for name, sel in (("moved", moved & visible), ("all", visible)):
            self.counts[name][0] += int((correct & sel).sum())
            self.counts[name][1] += int(sel.sum())

    def result(self) -> dict:
        return {name: (c / n if n else None) for name, (c, n) in self.counts.items()} | \
               {f"n_{name}": n for name, (_, n) in self.counts.items()}


def clip_targets(clip, grid: int, stride_px: float):
    """What a clip is scored on: query tokens (flat frame-0 indices of a grid of every other token), their true
    positions (N, F, 2) in tokens, visible (N, F) (never on frame 0, the query frame) and moved (N, F)."""
    query_tok = token_grid(grid // QUERY_STRIDE, grid, grid)
    cols, rows = (query_tok - 0.5).astype(np.int64).T
    queries = np.concatenate([np.zeros((len(rows), 1)), query_tok * stride_px], 1)
    tracks, visible = clip.track(queries)
    true_tok = tracks / stride_px
    moved = moved_points(true_tok, query_tok, 1.0)
    visible = visible.copy()
    visible[:, 0] = False  # frame 0 is the query frame itself
    return rows * grid + cols, true_tok, visible, moved


def tracked_targets(true_tok: np.ndarray, visible: np.ndarray, grid: int):
    """What a clip with tracked points is scored on: the points visible on frame 0, each queried at the token under
    it. ``true_tok`` (N, F, 2): the points' true positions in tokens of a ``grid`` x ``grid`` grid; ``visible`` (N, F).
    Returns query_index (Q,), true_tok (Q, F, 2), visible (Q, F) (never on frame 0) and moved (Q, F): more than one
    token from the centre of the query's token, the position zero motion predicts (so that zero motion scores 0 on
    moved points, as on generator clips, whose queries sit on token centres)."""
    queried = np.flatnonzero(visible[:, 0])
    cols, rows = np.clip(np.floor(true_tok[queried, 0]), 0, grid - 1).astype(np.int64).T
    true_tok = true_tok[queried]
    moved = moved_points(true_tok, np.stack([cols, rows], -1) + 0.5, 1.0)
    visible = visible[queried].copy()
    visible[:, 0] = False  # frame 0 is the query frame itself
    return rows * grid + cols, true_tok, visible, moved


def correct_from_argmax(argmax: np.ndarray, true_tok: np.ndarray, grid: int) -> np.ndarray:
    """Whether each matched token (flat index on a ``grid``-wide token grid) is within one token of the truth."""
    pred = np.stack([argmax % grid + 0.5, argmax // grid + 0.5], -1)
    return np.abs(pred - true_tok).max(-1) <= 1.0


def cosine_argmax(descriptors: torch.Tensor, query_index: np.ndarray, grid, backend: str) -> np.ndarray:
    """Argmax over each frame of the cosine between frame-0 query descriptors and every token; (N, F)."""
    d = F.normalize(descriptors.float(), dim=-1)[None]  # one "head"
    return match(d[:, torch.as_tensor(query_index)], d, grid, 0, scale=1.0, backend=backend).argmax.numpy()


def noisy_patches(noisy: torch.Tensor, patch: int) -> torch.Tensor:
    """(F, 3, H, W) -> (F * P, 3 * patch * patch): the noisy pixels under each token, frame-major."""
    f, c, h, w = noisy.shape
    x = noisy.reshape(f, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(f * (h // patch) * (w // patch), c * patch * patch)


def ncc_windows(noisy: torch.Tensor, patch: int, window: int) -> torch.Tensor:
    """(F, 3, H, W) -> (F * P, 3 * (window * patch)^2): the mean-centred pixels of the ``window`` x ``window``
    tokens around each token (zero padding at the border), so their cosine is the normalised cross-correlation."""
    pad = (window - 1) // 2 * patch
    cols = F.unfold(noisy, kernel_size=window * patch, stride=patch, padding=pad)  # (F, D, P)
    cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return cols - cols.mean(-1, keepdim=True)


@torch.no_grad()
def matching_accuracy(model: str, clips: dict, backend: str = "auto", progress: bool = True,
                      noise_levels=NOISE_LEVELS, device=None, dtype=None) -> dict:
    """Matching accuracy of every layer's q-k and features, and of the baselines, at each noise level, on
    ``clips`` (as :mod:`difftrack.data.clips` makes them) on the model's token grid, at any pixel size (each frame is
    resized to the model's input size). The baselines see the noisy input at that size, with the model's patch.
    Returns {"model", "describe", "qk": {layer: {s: tally}}, "feature": the same, "baselines": {baseline: {s:
    tally}}} with string keys."""
    bb = create_backbone(model, device=device, dtype=dtype)
    size = bb.native_size
    patch = bb.patch_size
    grid = (size[0] // patch, size[1] // patch)
    clip_grid = int(clips["grid"])
    if (clip_grid, clip_grid) != grid:
        raise UserError(f"the clips are scored on a {clip_grid}x{clip_grid} token grid, {model} has "
                        f"{grid[0]}x{grid[1]} tokens")
    layers = list(range(bb.num_layers))
    embeds = bb.encode_prompt([""])
    tallies = {(kind, layer, s): Tally() for kind in ("qk", "feature") for layer in layers for s in noise_levels}
    base = {(kind, s): Tally() for kind in BASELINES for s in noise_levels}
    for c, seed in enumerate(tqdm(clips["seeds"].tolist(), desc=f"{model}: held-out clips", disable=not progress)):
        query_index, true_tok = clips["query_index"][c], clips["true_tok"][c]
        visible, moved = clips["visible"][c], clips["moved"][c]
        x0 = torch.from_numpy(clips["video"][c]).permute(0, 3, 1, 2).float()[None] / 127.5 - 1
        latents = bb.encode_video(x0)
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
        zero = np.broadcast_to(query_index[:, None], visible.shape)
        for s in noise_levels:
            noisy = ((1 - s) * latents.float() + s * noise).to(bb.dtype)
            # early_exit: the forward stops after the last layer's attention (its MLP and the output head
            # are not needed for descriptors)
            with DescriptorCapture(bb, layers, features=True, early_exit=True) as cap:
                cap.run(bb.predict, noisy, torch.tensor(s * 1000.0), embeds)
            for layer in layers:
                desc = cap.results[(layer, 0)]
                q, k = desc.query[0].float(), desc.key[0].float()
                qk = match(q[:, torch.as_tensor(query_index)], k, grid, 0, backend=backend).argmax.numpy()
                tallies[("qk", layer, s)].add(correct_from_argmax(qk, true_tok, grid[1]), moved, visible)
                feat = cosine_argmax(desc.feature[0], query_index, grid, backend)
                tallies[("feature", layer, s)].add(correct_from_argmax(feat, true_tok, grid[1]), moved, visible)
            pix = cosine_argmax(noisy_patches(noisy[0].float(), patch), query_index, grid, backend)
            base[("noisy_patch", s)].add(correct_from_argmax(pix, true_tok, grid[1]), moved, visible)
            for w in NCC_WINDOWS:
                ncc = cosine_argmax(ncc_windows(noisy[0].float(), patch, w), query_index, grid, backend)
                base[(f"ncc_{w}", s)].add(correct_from_argmax(ncc, true_tok, grid[1]), moved, visible)
            base[("zero_motion", s)].add(correct_from_argmax(zero, true_tok, grid[1]), moved, visible)
    return {
        "model": model, "describe": bb.describe(),
        "qk": {f"{layer}": {f"{s}": tallies[("qk", layer, s)].result() for s in noise_levels} for layer in layers},
        "feature": {f"{layer}": {f"{s}": tallies[("feature", layer, s)].result() for s in noise_levels}
                    for layer in layers},
        "baselines": {kind: {f"{s}": base[(kind, s)].result() for s in noise_levels} for kind in BASELINES},
    }


def best(result: dict, kind: str, subset: str = "moved"):
    """(score, layer, noise level) of the best (layer, noise level) of ``kind`` in a :func:`matching_accuracy`
    result."""
    cells = [(v[subset], int(layer), float(s)) for layer, by_s in result[kind].items() for s, v in by_s.items()]
    return max(cells)
