"""Acceptance measurement of the embedded models: do their q-k match points across frames?

On held-out generator clips (seeds disjoint from training), each clip is noised to rectified-flow
level s (x_s = (1 - s) x0 + s noise, the same noise for every model) and run through one forward
with the empty prompt. From frame-0 query tokens (an 8x8 grid of token centres) to every other
frame we take the argmax of the head-averaged per-frame softmax of q.k (difftrack.kernels.match)
and count it correct when the predicted token centre is within one token (Chebyshev, token units)
of the true position. Scores are pooled over ground-truth-visible (point, frame) pairs:

- moved: pairs whose true position is more than one token from the query's own position
  (zero motion scores 0 there by construction);
- all: every visible pair of frames 1..F-1.

Next to q-k: intermediate features (cosine of the attention output before to_out), zero motion,
the noisy-patch baseline (cosine of the noisy pixels under each token) and classical matchers on the
same noisy input: normalised cross-correlation of the pixels in a window of 1, 3 or 5 tokens around
each token. The image twin runs every frame as its own sample, so its q/k come from per-frame forwards.

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

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from difftrack.backbones import create_backbone
from difftrack.capture import DescriptorCapture
from difftrack.data.synthetic import generate_clip
from difftrack.io import atomic_path, write_json
from difftrack.kernels import match
from difftrack.train import TRAIN_SEED_OFFSET

EVAL_SEED_START = 200_000
NOISE_LEVELS = (0.0, 0.1, 0.2, 0.5, 0.8)
NCC_WINDOWS = (1, 3, 5)  # tokens
FROZEN_CLIPS = Path(__file__).parent / "data" / "acceptance_clips.npz"
BASELINES = ("zero_motion", "noisy_patch", *(f"ncc_{w}" for w in NCC_WINDOWS))
QUERY_STRIDE = 2  # every other token in each direction: 8x8 queries on a 16x16 grid


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
    """Query tokens (flat frame-0 indices), true token positions (N, F, 2), visible (N, F), moved (N, F)."""
    rows, cols = np.meshgrid(np.arange(0, grid, QUERY_STRIDE) + QUERY_STRIDE // 2,
                             np.arange(0, grid, QUERY_STRIDE) + QUERY_STRIDE // 2, indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    query_tok = np.stack([cols + 0.5, rows + 0.5], -1)
    queries = np.concatenate([np.zeros((len(rows), 1)), query_tok * stride_px], 1)
    tracks, visible = clip.track(queries)
    true_tok = tracks / stride_px
    moved = np.abs(true_tok - query_tok[:, None]).max(-1) > 1.0
    visible = visible.copy()
    visible[:, 0] = False  # frame 0 is the query frame itself
    return rows * grid + cols, true_tok, visible, moved


def correct_from_argmax(argmax: np.ndarray, true_tok: np.ndarray, grid: int) -> np.ndarray:
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


def make_clips(seeds: list[int], frames: int, size: tuple[int, int], patch: int, aperiodic: bool = False) -> dict:
    """Frames and ground truth of generator clips, as stored in the frozen acceptance file."""
    grid = size[1] // patch
    out = {"seeds": [], "video": [], "query_index": [], "true_tok": [], "visible": [], "moved": []}
    for seed in seeds:
        clip = generate_clip(seed, num_frames=frames, height=size[0], width=size[1], aperiodic=aperiodic)
        query_index, true_tok, visible, moved = clip_targets(clip, grid, size[1] / grid)
        for name, value in zip(("seeds", "video", "query_index", "true_tok", "visible", "moved"),
                               (seed, clip.video, query_index, true_tok, visible, moved)):
            out[name].append(value)
    return {name: np.stack(values) for name, values in out.items()}


def load_clips(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


@torch.no_grad()
def evaluate(model: str, clips: dict, backend: str, progress: bool = True, noise_levels=NOISE_LEVELS, device=None,
             dtype=None) -> dict:
    bb = create_backbone(model, device=device, dtype=dtype)
    size = bb.native_size
    patch = bb.patch_size
    grid = (size[0] // patch, size[1] // patch)
    if clips["video"].shape[2:4] != tuple(size):
        raise SystemExit(f"error: the clips are {clips['video'].shape[2:4]}, {model} works at {tuple(size)}")
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
    """(score, layer, noise level) of the best (layer, noise level) for ``kind``."""
    cells = [(v[subset], int(layer), float(s)) for layer, by_s in result[kind].items() for s, v in by_s.items()]
    return max(cells)


def markdown(results: list[dict], seeds: list[int], command: str) -> str:
    levels = [f"{s}" for s in NOISE_LEVELS]
    lines = [f"# Embedded models: frame-0 q-k matching on {len(seeds)} held-out generator clips",
             "", f"Seeds {seeds[0]}..{seeds[-1]} (training clips use seeds >= {TRAIN_SEED_OFFSET}). Command:",
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


def main(argv=None) -> int:
    from difftrack.options import add_device_arguments, output_dir, output_file, positive, seed

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny-video", "tiny-image"])
    add_device_arguments(p)
    p.add_argument("--clips-file", default=str(FROZEN_CLIPS), help="frozen clips (default: the acceptance set)")
    p.add_argument("--generate", action="store_true",
                   help="draw --clips clips of the current generator from --seed-start instead of the frozen file")
    p.add_argument("--aperiodic", action="store_true",
                   help="--generate: the aperiodic distribution (walls and sprites speckled or photographic)")
    p.add_argument("--clips", type=positive, default=20)
    p.add_argument("--seed-start", type=seed, default=EVAL_SEED_START)
    p.add_argument("--frames", type=positive, default=8)
    p.add_argument("--size", type=positive, default=64, help="--generate / --freeze: frame side in pixels")
    p.add_argument("--patch", type=positive, default=4, help="--generate / --freeze: the models' patch size")
    p.add_argument("--freeze", type=output_file(".npz", new_parent=True), metavar="FILE",
                   help="write the clips of --seed-start.. to FILE and stop")
    p.add_argument("--backend", default="auto")
    p.add_argument("--out", type=output_dir, default="results/embedded")
    args = p.parse_args(argv)
    seeds = list(range(args.seed_start, args.seed_start + args.clips))
    if seeds[-1] >= TRAIN_SEED_OFFSET:
        print(f"error: held-out seeds must stay below {TRAIN_SEED_OFFSET} (training seeds)", file=sys.stderr)
        return 2
    if args.freeze or args.generate:
        clips = make_clips(seeds, args.frames, (args.size, args.size), args.patch, aperiodic=args.aperiodic)
    else:
        clips = load_clips(Path(args.clips_file))
    if args.freeze:
        Path(args.freeze).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.freeze, suffix=".npz") as tmp:
            np.savez_compressed(tmp, **clips)
        print(f"froze {len(seeds)} clips ({seeds[0]}..{seeds[-1]}) -> {args.freeze}")
        return 0
    seeds = clips["seeds"].tolist()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = [evaluate(m, clips, args.backend, device=args.device, dtype=args.dtype) for m in args.models]
    command = "python benchmarks/embedded_eval.py " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = {"command": command, "seeds": seeds, "clips": "generated" if args.generate else str(args.clips_file),
               "noise_levels": list(NOISE_LEVELS), "frames": int(clips["video"].shape[1]),
               "seconds": round(time.perf_counter() - start, 1), "results": results,
               "acceptance": {r["model"]: dict(zip(("score", "layer", "s"), best(r, "qk"))) for r in results}}
    write_json(out / "embedded_eval.json", summary)
    with atomic_path(out / "embedded_eval.md") as tmp:
        tmp.write_text(markdown(results, seeds, command))
    print((out / "embedded_eval.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
