"""Zero-shot point tracking from the query-key matching inside a video DiT's 3D attention.

Pipeline per video: resize to the backbone's working size -> encode every RGB frame as its own latent
frame (1:1 frame mapping) -> for each query frame ("anchor"), split the other frames into chunks that
each span the whole video (interval = number of chunks, as in the authors' release) and put the anchor
in every chunk -> one forward per chunk at the chosen step, stopping after the last needed layer, with
one (empty-prompt) branch -> costs from the fused kernel with descriptors of all chosen layers and
steps stacked as heads (so the head-averaged cost is the average over layers and steps too) ->
sub-token soft-argmax -> occlusion from forward-backward cycle consistency and peak confidence.

Matching from the anchor straight to every frame tracks forward and backward in time alike, and a
query's result never depends on the other queries.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from difftrack.backbones import Backbone, create_backbone
from difftrack.capture import DescriptorCapture
from difftrack.errors import UserError
from difftrack.io import check_points
from difftrack.kernels import match
from difftrack.noising import NOISE_MODES, check_step, prepare_latents


CALIBRATION_DIR = Path(__file__).parent / "calibration"


def calibration_key(model_name: str) -> str:
    """File stem of a model's occlusion calibration (hub ids and paths flattened)."""
    return model_name.strip("/").replace("/", "--")


@dataclass
class TrackerConfig:
    """Everything that decides a tracking result (also written into the output's ``meta``)."""

    layers: list[int] | None = None  # None: the backbone's default tracking layers
    steps: list[int] | None = None  # step indices into a schedule of ``num_steps``; None: backbone default
    num_steps: int | None = None
    noise: str = "add"
    window: int | None = None  # frames per forward; None: the backbone's trained window
    refine_window: int = 1  # soft-argmax radius in tokens around the peak
    bidirectional: bool = True  # average C[s->j] with C[j->s]^T
    cycle_threshold: float | None = None  # tokens; larger forward-backward error -> occluded; None: calibrated
    peak_threshold: float | None = None  # smaller head-averaged peak probability -> occluded; None: calibrated
    seed: int = 0
    backend: str = "auto"


# Occlusion thresholds of a model without a calibration file (benchmarks/calibrate_tracker.py writes one).
UNCALIBRATED = {"cycle_threshold": 1.5, "peak_threshold": 0.0}


@dataclass
class TrackerStats:
    forwards: int = 0
    layers_run: int = 0
    chunks: list[list[int]] = field(default_factory=list)


def anchored_chunks(anchor: int, num_frames: int, window: int) -> list[list[int]]:
    """Frame sets of the forwards for one anchor: the anchor plus every n-th other frame (n = chunks)."""
    if window < 2:
        raise UserError(f"the tracking window must hold at least 2 frames, got {window}")
    others = [f for f in range(num_frames) if f != anchor]
    if not others:
        return [[anchor]]
    n = math.ceil(len(others) / (window - 1))
    return [sorted([anchor] + others[k::n]) for k in range(n)]


def sample_descriptors(desc: torch.Tensor, points_tok: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bilinearly sample per-head descriptors (H, P, D) of one frame at token coordinates (N, 2) -> (H, N, D)."""
    h, w = grid
    heads, _, dim = desc.shape
    maps = desc.reshape(heads, h, w, dim).permute(0, 3, 1, 2).float()
    norm = torch.stack([points_tok[:, 0] / w * 2 - 1, points_tok[:, 1] / h * 2 - 1], dim=-1).float()
    out = F.grid_sample(maps, norm.view(1, 1, -1, 2).expand(heads, -1, -1, -1), mode="bilinear",
                        padding_mode="border", align_corners=False)  # token centres at j + 0.5
    return out[:, :, 0, :].permute(0, 2, 1).to(desc.dtype)


def load_recommendation(path: str | Path | None, backbone: Backbone) -> tuple[list[int], list[int] | None, int | None]:
    """Layers, steps and the schedule length they index, as recommended by `difftrack analyze`
    (recommendation.json or its directory);
    ``path`` None reads the recommendation shipped with the model, if it has one."""
    if path is None:
        path = backbone.recommendation_path
        if path is None:
            raise UserError(f"`auto` layers need --recommendation DIR (from `difftrack analyze --out DIR`); "
                            f"{backbone.name} ships no recommendation.json")
    path = Path(path)
    if path.is_dir():
        path = path / "recommendation.json"
    if not path.is_file():
        raise UserError(f"no analysis recommendation at {path}; run `difftrack analyze --out DIR` first "
                        f"and pass --recommendation DIR, or give explicit layers")
    rec = json.loads(path.read_text())
    return backbone.check_layers(rec["layers"]), rec.get("steps"), rec.get("num_steps")


class DiffTracker:
    """Track points through a video with a video DiT's attention.

    ``tracker(video, queries)`` takes uint8 RGB frames (T, H, W, 3) and queries (N, 3) as (t, x, y)
    pixels and returns tracks (T, N, 2) pixel (x, y) and visibility (T, N), the signature shared
    with :mod:`difftrack.baselines`. :class:`DiffTrackerPredictor` wraps it with CoTracker's
    batched tensor shapes.
    """

    def __init__(self, model: str | Backbone = "tiny-video", config: TrackerConfig | None = None, **overrides):
        self.backbone = model if isinstance(model, Backbone) else create_backbone(model)
        unknown = sorted(set(overrides) - {f.name for f in fields(TrackerConfig)})
        if unknown:
            raise TypeError(f"unknown tracker option {', '.join(unknown)}")
        cfg = replace(config or TrackerConfig(), **overrides)  # the caller's config stays as it was
        bb = self.backbone
        calibration = CALIBRATION_DIR / f"{calibration_key(bb.name)}.json"
        calibrated = json.loads(calibration.read_text()) if calibration.is_file() else {}
        for k in ("cycle_threshold", "peak_threshold"):
            if getattr(cfg, k) is None:  # only what the caller left open is calibrated
                value = calibrated.get(k, UNCALIBRATED[k])
                setattr(cfg, k, float("inf") if value is None else float(value))
            elif not getattr(cfg, k) >= 0:
                raise UserError(f"{k} must be a number >= 0, got {getattr(cfg, k)}")
        if cfg.window is not None and cfg.window < 2:
            raise UserError(f"the tracking window must hold at least 2 frames, got {cfg.window}")
        cfg.layers = bb.check_layers(cfg.layers if cfg.layers is not None else bb.track_layers())
        if cfg.num_steps is None:
            cfg.num_steps = bb.default_track_step[1]
        if cfg.steps is None:
            cfg.steps = [bb.default_track_step[0]]
        for s in cfg.steps:
            check_step(s, cfg.num_steps)
        if cfg.noise not in NOISE_MODES:
            raise UserError(f"unknown noise mode {cfg.noise!r}; choose one of {', '.join(NOISE_MODES)}")
        if cfg.window is None:
            cfg.window = bb.max_frames
        self.config = cfg
        self.stats = TrackerStats()
        self._empty_prompt = None

    # ----- public API ----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, video: np.ndarray, queries: np.ndarray, progress: bool = False):
        video = np.asarray(video)
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, 3)
        if video.ndim != 4 or video.shape[-1] != 3:
            raise UserError(f"video must be RGB frames (T, H, W, 3), got shape {video.shape}")
        if len(queries) == 0:
            raise UserError("no query points given; pass at least one (t, x, y) point or use --grid N")
        num_frames, height, width = video.shape[:3]
        check_points(queries, num_frames, height, width)
        latents, geometry = self._encode(video)
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(self.config.seed)).to(latents)

        tracks = np.zeros((num_frames, len(queries), 2), np.float32)
        visible = np.zeros((num_frames, len(queries)), bool)
        # Per (frame, point) evidence behind the visibility call, kept for calibration and inspection.
        self.diagnostics = {"cycle_error": np.zeros((num_frames, len(queries)), np.float32),
                            "peak": np.ones((num_frames, len(queries)), np.float32)}
        anchors = sorted({int(t) for t in queries[:, 0]})
        jobs = [(a, c) for a in anchors for c in anchored_chunks(a, num_frames, self.config.window)]
        self.stats.chunks = [c for _, c in jobs]
        for anchor, chunk in tqdm(jobs, desc="tracking", unit="forward", disable=not progress):
            idx = np.nonzero(queries[:, 0] == anchor)[0]
            xy_tok = torch.from_numpy(geometry.pixel_to_token(queries[idx, 1:])).float()
            pos, cycle_error, peak = self._track_chunk(latents, noise, geometry, anchor, chunk, xy_tok)
            for j, f in enumerate(chunk):
                if f == anchor:
                    continue
                tracks[f, idx] = geometry.token_to_pixel(pos[:, j].numpy())
                self.diagnostics["cycle_error"][f, idx] = cycle_error[:, j].numpy()
                self.diagnostics["peak"][f, idx] = peak[:, j].numpy()
        visible = self.occlusion_call(self.diagnostics["cycle_error"], self.diagnostics["peak"])
        tracks[queries[:, 0].astype(int), np.arange(len(queries))] = queries[:, 1:]
        visible[queries[:, 0].astype(int), np.arange(len(queries))] = True
        return tracks, visible

    def meta(self) -> dict:
        return {"model": self.backbone.name, **asdict(self.config),
                "forwards": self.stats.forwards, "layers_run": self.stats.layers_run}

    # ----- internals -----------------------------------------------------------------------------
    def _encode(self, video: np.ndarray):
        import cv2

        bb = self.backbone
        num_frames, height, width = video.shape[:3]
        wh, ww = bb.working_size(height, width)
        frames = np.stack([cv2.resize(f, (ww, wh), interpolation=cv2.INTER_AREA) for f in video])
        pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1)[None]
        latents = bb.encode_video(pixels.to(bb.device), frame_as_latent=True)
        if self._empty_prompt is None:
            self._empty_prompt = bb.encode_prompt([""])
        geometry = bb.geometry(latents, self._empty_prompt.shape[1], frame_size=(height, width),
                               frame_as_latent=True, rgb_frames=num_frames)
        return latents, geometry

    def _descriptors(self, latents, noise, chunk):
        """Stack q/k of every chosen (layer, step) along the head axis: (H_total, F_chunk * P, D)."""
        cfg, bb = self.config, self.backbone
        qs, ks = [], []
        for step in cfg.steps:
            x, t = prepare_latents(bb, latents[:, chunk], cfg.noise, step, cfg.num_steps, noise[:, chunk],
                                   self._empty_prompt)
            with DescriptorCapture(bb, cfg.layers, early_exit=True) as cap:
                cap.run(bb.predict, x, t, self._empty_prompt)
            self.stats.forwards += 1
            self.stats.layers_run += max(cfg.layers) + 1
            for layer in cfg.layers:
                d = cap.results[(layer, 0)]
                qs.append(d.query[0])
                ks.append(d.key[0])
        return torch.cat(qs), torch.cat(ks)

    def _track_chunk(self, latents, noise, geometry, anchor, chunk, xy_tok):
        cfg = self.config
        grid = (geometry.grid_h, geometry.grid_w)
        tokens = geometry.tokens_per_frame
        q_all, k_all = self._descriptors(latents, noise, chunk)
        src = chunk.index(anchor)
        frame_q = q_all[:, src * tokens:(src + 1) * tokens]
        query = sample_descriptors(frame_q, xy_tok, grid)
        reverse = None
        if cfg.bidirectional:
            reverse = (q_all, torch.from_numpy(geometry.nearest_token(geometry.token_to_pixel(xy_tok.numpy()))))
        fwd = match(query, k_all, grid, src, reverse=reverse, window=cfg.refine_window, backend=cfg.backend)
        pos = fwd.refined.float()  # (n, F_chunk, 2) token units

        # Forward-backward cycle: from each predicted position, match back into the anchor frame.
        n, nf = pos.shape[:2]
        back_queries = torch.cat([sample_descriptors(q_all[:, j * tokens:(j + 1) * tokens], pos[:, j], grid)
                                  for j in range(nf)], dim=1)  # (H, nf * n, D), frame-major
        anchor_keys = k_all[:, src * tokens:(src + 1) * tokens]
        back = match(back_queries, anchor_keys, grid, 0, window=cfg.refine_window, backend=cfg.backend)
        back_pos = back.refined[:, 0].float().view(nf, n, 2).transpose(0, 1)
        cycle_error = (back_pos - xy_tok[:, None]).norm(dim=-1)
        return pos, cycle_error, fwd.peak.float()

    def occlusion_call(self, cycle_error: np.ndarray, peak: np.ndarray) -> np.ndarray:
        """Visible where the forward-backward error is small and the matching peak is confident."""
        return (cycle_error <= self.config.cycle_threshold) & (peak >= self.config.peak_threshold)


class DiffTrackerPredictor(torch.nn.Module):
    """CoTracker-style predictor: ``forward(video (B, T, 3, H, W) in [0, 255], queries (B, N, 3) as (t, x, y))``
    returns tracks (B, T, N, 2) and visibility (B, T, N)."""

    def __init__(self, model: str | Backbone = "tiny-video", **options):
        super().__init__()
        self.tracker = DiffTracker(model, **options)

    @torch.no_grad()
    def forward(self, video: torch.Tensor, queries: torch.Tensor):
        tracks, visibility = [], []
        for b in range(video.shape[0]):
            frames = video[b].permute(0, 2, 3, 1).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
            tr, vis = self.tracker(frames, queries[b].cpu().numpy())
            tracks.append(torch.from_numpy(tr))
            visibility.append(torch.from_numpy(vis))
        return torch.stack(tracks).to(video.device), torch.stack(visibility).to(video.device)
