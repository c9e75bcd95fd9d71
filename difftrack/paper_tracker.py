"""The paper's tracking procedure, as the DiffTrack release runs it on TAP-Vid, built from difftrack's stages.

Per video:

1. every frame is resized bilinearly, in float, to the size the paper tracks the model at (its trained size;
   480x720 for CogVideoX and HunyuanVideo, ``Backbone.paper_geometry``) and encoded as its own latent frame
   (the VAE posterior's mode, or a sample drawn frame by frame with ``vae_sample_seed``);
2. chunks (:func:`chunk_schedule`): the anchor frame (the query frame; 0 in the paper) and up to ``chunk - 1``
   other frames spread over the video at interval T // (chunk - 1); the next chunk starts one frame later, until
   every frame has been in a chunk;
3. one forward per chunk and step on clean latents at the step's timestep (no noise, no inversion), with the
   empty prompt, stopping after the last layer read; the q/k of several layers and steps are concatenated per
   head, as the release concatenates them;
4. per frame, for the anchor tokens around the queries: the head-averaged softmax over the frame's tokens of
   q(anchor) . k(frame), averaged with the reverse direction (softmax over the anchor's tokens of
   q(frame) . k(anchor)), averaged over the chunks the frame was in;
5. each anchor token's argmax target, and a query's position the bilinear interpolation of its neighbouring
   anchor tokens' targets.

Every point is visible, as in the paper; ``occlusion=True`` adds difftrack's occlusion calls (forward-backward
cycle error and peak against the model's thresholds) without moving any position.

Two of the release's defects are fixed unless ``release_quirks=True``: its logits are scaled by
1/sqrt(number of heads) instead of 1/sqrt(head dim); and its read-out puts token j at pixel 16 j instead of its
centre 16 j + 8 and samples at (x / 16) * (w - 1) / (w - W / 1024) (a shrink of about 0.7 %), reading zeros past
the last token. With the quirks on, the tracks are the release's own arithmetic.

Forwards: ``len(chunk_schedule(T, chunk))`` (about T / (chunk - 1) + chunk) per distinct query frame, times the
steps: queries on many different frames multiply the work (TAP-Vid's 'first' protocol), frame-0 queries do not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from difftrack.backbones import DEFAULT_BACKBONE, Backbone, as_backbone
from difftrack.backbones.settings import configured, fill_occlusion_thresholds
from difftrack.capture import DescriptorCapture
from difftrack.errors import UserError
from difftrack.kernels.torch_chunked import reverse_cost
from difftrack.noising import check_step
from difftrack.tracker_inputs import check_video_and_queries


@dataclass
class PaperTrackerConfig:
    """Everything that decides the paper tracker's result (also written into the output's ``meta``)."""

    layers: list[int] | None = None  # None: the method's tracking layers for the architecture
    steps: list[int] | None = None  # step indices of a ``num_steps`` schedule; None: the method's step
    num_steps: int | None = None
    chunk: int | None = None  # frames per forward, the anchor included; None: Backbone.paper_geometry
    size: tuple[int, int] | None = None  # (height, width) frames are resized to; None: Backbone.paper_geometry
    release_quirks: bool = False
    vae_sample_seed: int | None = None  # None: the posterior's mode
    occlusion: bool = False
    cycle_threshold: float | None = None  # tokens; None: the model's calibrated (or uncalibrated) threshold
    peak_threshold: float | None = None
    memory_budget: int = 256 * 2**20  # bytes of per-head cost maps computed at once


def chunk_schedule(num_frames: int, chunk: int) -> list[list[int]]:
    """The release's chunks over positions 1..num_frames - 1 (position 0 is the anchor, prepended to each):
    interval i = num_frames // (chunk - 1) (at least 1); the first chunk is 1, 1 + i, ..., 1 + (chunk - 2) i;
    each next one starts one position later and ends at min(start + (chunk - 2) i, num_frames - 1), until every
    position has been in a chunk."""
    if chunk < 2:
        raise UserError(f"a chunk must hold the anchor and at least one more frame, got {chunk}")
    interval = max(1, num_frames // (chunk - 1))
    chunks, visited = [], set()
    start, end = 1, min((chunk - 2) * interval + 1, num_frames - 1)
    while len(visited) < num_frames - 1:
        positions = list(range(start, end + 1, interval))
        visited.update(positions)
        chunks.append(positions)
        start += 1
        end = min(start + (chunk - 2) * interval, num_frames - 1)
    return chunks


@dataclass
class ReadOut:
    """Where a query reads the anchor's argmax map: bilinear corners (n, 4) as token indices into ``tokens`` and
    their weights (zero for corners outside the grid, as grid_sample's zero padding reads them)."""

    tokens: torch.Tensor  # (m,) distinct anchor tokens whose targets are needed
    corner: torch.Tensor  # (n, 4) indices into ``tokens``
    weight: torch.Tensor  # (n, 4)


def read_out_points(xy_tokens: torch.Tensor, grid: tuple[int, int], quirks: bool) -> ReadOut:
    """Bilinear read-out of the argmax map at queries ``xy_tokens`` (n, 2), pixel / token stride (token j spans
    [j, j + 1)). The map holds token j's target at sample position j. Fixed: the query's place relative to
    token centres, (x - 0.5, y - 0.5), clamped to the grid. Release: (x, y) scaled by (w - 1) / (w - w / 64)
    (its W / 1024 margin at 16 px a token), zeros past the grid."""
    grid_h, grid_w = grid
    x, y = xy_tokens[:, 0].double(), xy_tokens[:, 1].double()
    if quirks:
        margin = grid_w / 64
        x = x / (grid_w - margin) * (grid_w - 1)
        y = y / (grid_h - margin) * (grid_h - 1)
    else:
        x = (x - 0.5).clamp(0, grid_w - 1)
        y = (y - 0.5).clamp(0, grid_h - 1)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    cols = torch.stack([x0, x0 + 1, x0, x0 + 1], 1).long()
    rows = torch.stack([y0, y0, y0 + 1, y0 + 1], 1).long()
    weight = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1)
    inside = (cols >= 0) & (cols < grid_w) & (rows >= 0) & (rows < grid_h)
    weight = torch.where(inside, weight, torch.zeros_like(weight))
    index = rows.clamp(0, grid_h - 1) * grid_w + cols.clamp(0, grid_w - 1)
    tokens, corner = torch.unique(index, return_inverse=True)
    return ReadOut(tokens, corner, weight)


def two_way_costs(q_source: torch.Tensor, k_target: torch.Tensor, q_target: torch.Tensor, k_anchor: torch.Tensor,
                  source_index: torch.Tensor, scale: float, memory_budget: int, keep_reverse: bool = False):
    """The method's matching cost from anchor tokens ``source_index`` to one target frame: (m, P) =
    (mean over heads of softmax_P(scale q_s . k_P) + [mean over heads of softmax_P0(scale q_P . k_P0)]^T) / 2.
    q_source (H, m, D), k_target / q_target (H, P, D), k_anchor (H, P0, D). With ``keep_reverse`` also the
    head-averaged reverse map (P, P0) (the occlusion call's backward match)."""
    heads, tokens, _ = q_target.shape
    anchor_tokens = k_anchor.shape[1]
    chunk = max(1, memory_budget // (tokens * anchor_tokens * 4))
    forward = torch.zeros(q_source.shape[1], tokens, device=q_source.device)
    for h in range(0, heads, chunk):
        heads_here = slice(h, h + chunk)
        forward += torch.softmax(scale * q_source[heads_here].float() @ k_target[heads_here].float().transpose(1, 2),
                                 -1).sum(0)
    forward /= heads
    columns = torch.arange(anchor_tokens, device=q_source.device) if keep_reverse else source_index
    reverse = reverse_cost(q_target, k_anchor, columns, scale, torch.float32, memory_budget)
    cost = (forward + (reverse[source_index] if keep_reverse else reverse)) / 2
    return cost, (reverse.T if keep_reverse else None)


class PaperTracker:
    """The paper's zero-shot tracker. ``tracker(video, queries)`` takes uint8 RGB frames (T, H, W, 3) and queries
    (N, 3) as (t, x, y) pixels and returns tracks (T, N, 2) pixel (x, y) and visibility (T, N), like
    :class:`difftrack.tracker.DiffTracker` (the signature of :mod:`difftrack.baselines`)."""

    name = "paper"

    def __init__(self, model: str | Backbone = DEFAULT_BACKBONE, config: PaperTrackerConfig | None = None,
                 device=None, dtype=None, **overrides):
        self.backbone = bb = as_backbone(model, device, dtype)
        cfg = configured(PaperTrackerConfig, config, overrides, "paper tracker")
        cfg.layers = bb.check_layers(cfg.layers if cfg.layers is not None else bb.track_layers())
        step, num_steps = bb.default_track_step
        cfg.num_steps = num_steps if cfg.num_steps is None else cfg.num_steps
        cfg.steps = [step] if cfg.steps is None else list(cfg.steps)
        for s in cfg.steps:
            check_step(s, cfg.num_steps)
        size, chunk = bb.paper_geometry()
        cfg.size = tuple(int(v) for v in (cfg.size or size))
        cfg.chunk = chunk if cfg.chunk is None else cfg.chunk
        if cfg.chunk < 2:
            raise UserError(f"a chunk must hold the anchor and at least one more frame, got {cfg.chunk}")
        fill_occlusion_thresholds(cfg, bb.occlusion_thresholds())
        self.config = cfg
        self.forwards = 0
        self._conditioning = None

    def meta(self) -> dict:
        return {"tracker": self.name, "model": self.backbone.name, "device": str(self.backbone.device),
                "dtype": str(self.backbone.dtype).removeprefix("torch."), **asdict(self.config),
                "forwards": self.forwards}

    @torch.no_grad()
    def __call__(self, video: np.ndarray, queries: np.ndarray, progress: bool = False):
        video, queries = check_video_and_queries(video, queries)
        num_frames, height, width = video.shape[:3]
        cfg = self.config
        if self._conditioning is None:
            self._conditioning = self.backbone.empty_conditioning()
        pixels = self._resize(video)
        latents = None if cfg.vae_sample_seed is not None else self.backbone.encode_video(pixels, frame_as_latent=True)
        generator = None if cfg.vae_sample_seed is None else torch.Generator().manual_seed(cfg.vae_sample_seed)

        tracks = np.repeat(queries[None, :, 1:], num_frames, 0).astype(np.float32)
        visible = np.ones((num_frames, len(queries)), bool)
        anchors = sorted(set(queries[:, 0].astype(int).tolist()))
        chunks = chunk_schedule(num_frames, cfg.chunk) if num_frames > 1 else []
        bar = tqdm(total=len(anchors) * len(chunks), desc="tracking (paper)", unit="chunk", disable=not progress)
        for anchor in anchors:
            index = np.nonzero(queries[:, 0].astype(int) == anchor)[0]
            order = [anchor] + [f for f in range(num_frames) if f != anchor]
            positions, visibility = self._track_anchor(pixels, latents, generator, order, chunks,
                                                       queries[index, 1:], (height, width), bar)
            for frame, xy in positions.items():
                tracks[frame, index] = xy
            for frame, seen in visibility.items():
                visible[frame, index] = seen
        bar.close()
        return tracks, visible

    # ----- internals -----------------------------------------------------------------------------------------
    def _resize(self, video: np.ndarray) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> (1, T, 3, h, w) in [-1, 1] at the tracking size, bilinear in float (no rounding)."""
        frames = torch.from_numpy(video).permute(0, 3, 1, 2).float()
        if tuple(frames.shape[-2:]) != self.config.size:
            frames = F.interpolate(frames, size=self.config.size, mode="bilinear", align_corners=False)
        return (frames / 127.5 - 1)[None]

    def _latents(self, pixels, latents, generator, frames: list[int]) -> torch.Tensor:
        if latents is not None:
            return latents[:, frames]
        # the release encodes each chunk's frames anew, drawing every frame's posterior sample in turn
        return self.backbone.encode_video(pixels[:, frames], frame_as_latent=True, generator=generator)

    def _descriptors(self, chunk_latents):
        """q, k (H, F * P, D * layers * steps) of one chunk: every (step, layer) concatenated along the head dim."""
        cfg, bb = self.config, self.backbone
        x = bb.frames_as_tokens(chunk_latents)
        embeds, extras = self._conditioning
        timesteps = bb.timesteps(cfg.num_steps)
        qs, ks = [], []
        for step in cfg.steps:
            with DescriptorCapture(bb, cfg.layers, early_exit=True) as cap:
                cap.run(bb.predict, x, timesteps[step], embeds, **extras)
            self.forwards += 1
            for layer in cfg.layers:
                qs.append(cap.results[(layer, 0)].query[0])
                ks.append(cap.results[(layer, 0)].key[0])
        return torch.cat(qs, -1), torch.cat(ks, -1), qs[0].shape[-1], qs[0].shape[0]

    def _track_anchor(self, pixels, latents, generator, order, chunks, points, frame_size, bar):
        """Positions {frame: (n, 2) pixels} and visibility {frame: (n,)} of ``points`` (n, 2) on ``order[0]``."""
        cfg = self.config
        height, width = frame_size
        size_h, size_w = cfg.size
        bb = self.backbone
        sc = bb.spatial_compression  # the grid from the latents' shape alone: no encode (nor posterior draw) for it
        shape = (1, 1, bb.latent_channels, size_h // sc, size_w // sc)
        geometry = bb.geometry(torch.empty(shape, device="meta"), 0, frame_size=cfg.size, frame_as_latent=True)
        grid = (geometry.grid_h, geometry.grid_w)
        tokens = geometry.tokens_per_frame
        stride = np.array([size_w / grid[1], size_h / grid[0]])
        xy_tokens = points * np.array([size_w / width, size_h / height]) / stride
        read = read_out_points(torch.from_numpy(xy_tokens), grid, cfg.release_quirks)
        # the occlusion call's backward match starts from the token under each query
        nearest = torch.from_numpy(geometry.nearest_token(xy_tokens * stride)) if cfg.occlusion else None
        source = read.tokens if nearest is None else torch.cat([read.tokens, nearest])

        sums, counts, back_sums = {}, {}, {}
        for chunk in chunks:
            frames = [order[0]] + [order[p] for p in chunk]
            q, k, head_dim, heads = self._descriptors(self._latents(pixels, latents, generator, frames))
            scale = 1 / math.sqrt(heads if cfg.release_quirks else head_dim)
            source = source.to(q.device)
            q_source, k_anchor = q[:, source], k[:, :tokens]
            for j, frame in enumerate(frames[1:], start=1):
                target = slice(j * tokens, (j + 1) * tokens)
                cost, reverse = two_way_costs(q_source, k[:, target], q[:, target], k_anchor, source, scale,
                                              cfg.memory_budget, keep_reverse=cfg.occlusion)
                sums[frame] = sums.get(frame, 0) + cost
                counts[frame] = counts.get(frame, 0) + 1
                if cfg.occlusion:
                    back_sums[frame] = back_sums.get(frame, 0) + reverse
            bar.update(1)

        m = len(read.tokens)
        positions, visibility = {}, {}
        for frame, total in sums.items():
            cost = total / counts[frame]
            peak, target = cost.max(-1)
            target_xy = torch.stack([target % grid[1], target // grid[1]], -1).double().cpu()  # (col, row)
            xy = (read.weight[..., None] * target_xy[:m][read.corner]).sum(1)  # (n, 2) tokens
            if not cfg.release_quirks:
                xy = xy + 0.5  # a token index j stands for its centre
            positions[frame] = (xy.numpy() * stride * np.array([width / size_w, height / size_h])).astype(np.float32)
            if cfg.occlusion:
                own = target[m:].cpu()  # target of the token under each query
                back = (back_sums[frame] / counts[frame])[own.to(back_sums[frame].device)].argmax(-1).cpu()
                back_xy = torch.stack([back % grid[1], back // grid[1]], -1).double() + 0.5
                cycle = (back_xy - torch.from_numpy(xy_tokens)).norm(dim=-1).numpy()
                visibility[frame] = (cycle <= cfg.cycle_threshold) & (peak[m:].cpu().numpy() >= cfg.peak_threshold)
        return positions, visibility
