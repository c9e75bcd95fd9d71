"""Zero-shot point tracking from the query-key matching inside a video DiT's 3D attention.

Pipeline per video: resize to the backbone's working size -> encode every RGB frame as its own latent
frame (1:1 frame mapping) -> cut the video into windows of ``window`` frames that overlap by one frame
-> per window one forward per (step, noise draw), stopping after the last needed layer, with one
(empty-prompt) branch; its q/k serve every query inside the window -> costs from the fused kernel with
the descriptors of all chosen layers, steps and noise draws stacked as heads (so the head-averaged cost
is the ensemble average) -> per frame the K best tokens at sub-token soft-argmax positions -> a Viterbi
pass over them with a motion prior and an occluded state (``temporal="viterbi"``; ``"none"`` keeps the
per-frame argmax); the motion prior's second component is the scene's dominant motion (a camera pan),
estimated from the costs of every token of the start frame, with one candidate per frame exactly on it
-> the track's end in the window's last frame starts it in the next window (chaining).
A second pass runs the windows in reverse for the frames before each query's frame. Forwards grow with
T / window, whatever the queries; a query's result never depends on the other queries.

Occlusion: the Viterbi occluded state, forward-backward cycle consistency (matching the token under each
predicted position back into the frame the window's segment started from) and peak confidence together.
The occluded state moves with the dominant motion, and a frame's presence (its share of the point's joint
attention, from the kernel's joint scores, against the best frame's) weighs against the visible states: a
covered point's per-frame softmax still peaks confidently on a neighbour, but the frame as a whole holds
nothing like it. A point the dominant motion carries out of the frame is occluded. A track that ends a
window occluded starts the next one occluded, matched with its descriptor from the last frame it was seen on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from difftrack.backbones import DEFAULT_BACKBONE, Backbone, as_backbone
from difftrack.backbones.settings import configured, fill_occlusion_thresholds
from difftrack.capture import DescriptorCapture, sample_descriptors
from difftrack.decoding import MotionModel, outside_frame, viterbi_decode
from difftrack.errors import UserError
from difftrack.kernels import match
from difftrack.kernels.common import window_tokens
from difftrack.noising import check_noising, prepare_latents
from difftrack.tracker_config import TEMPORAL_MODES, TRACKERS, UNCALIBRATED_SETTINGS, TrackerConfig
from difftrack.tracker_inputs import check_points, check_video_and_queries


@dataclass
class TrackerStats:
    forwards: int = 0
    layers_run: int = 0
    windows: list[list[int]] = field(default_factory=list)


def frame_windows(num_frames: int, window: int) -> list[list[int]]:
    """Windows of ``window`` consecutive frames, each starting on the last frame of the one before
    (the last window ends on the last frame), covering the video."""
    if window < 2:
        raise UserError(f"the tracking window must hold at least 2 frames, got {window}")
    if num_frames <= window:
        return [list(range(num_frames))]
    starts = list(range(0, num_frames - window, window - 1)) + [num_frames - window]
    return [list(range(a, a + window)) for a in starts]


def frame_noise(shape, frames: list[int], seed: int, draw: int = 0) -> torch.Tensor:
    """Noise (1, F, C, h, w) for latent ``frames``, each frame drawn from its own (seed, draw, frame)
    generator: the same whatever the window, the video length or the queries (so online = offline)."""
    per_frame = shape[2:]
    return torch.stack([torch.randn(per_frame, generator=torch.Generator().manual_seed(
        ((seed * 1_000_003 + draw) * 1_000_033 + f) % 2**63)) for f in frames])[None]


class DiffTracker:
    """Track points through a video with a video DiT's attention.

    ``tracker(video, queries)`` takes uint8 RGB frames (T, H, W, 3) and queries (N, 3) as (t, x, y)
    pixels and returns tracks (T, N, 2) pixel (x, y) and visibility (T, N), the signature shared
    with :mod:`difftrack.baselines`. :class:`DiffTrackerPredictor` wraps it with CoTracker's
    batched tensor shapes.
    """

    name = "difftrack"

    def __init__(self, model: str | Backbone = DEFAULT_BACKBONE, config: TrackerConfig | None = None,
                 device=None, dtype=None, **overrides):
        self.backbone = bb = as_backbone(model, device, dtype)
        cfg = configured(TrackerConfig, config, overrides, "tracker")
        calibrated_settings = bb.tracker_settings()
        for k, uncalibrated in UNCALIBRATED_SETTINGS.items():
            if getattr(cfg, k) is None:
                setattr(cfg, k, calibrated_settings.get(k, uncalibrated))
        fill_occlusion_thresholds(cfg, bb.occlusion_thresholds())  # only what the caller left open is calibrated
        if cfg.window is not None and cfg.window < 2:
            raise UserError(f"the tracking window must hold at least 2 frames, got {cfg.window}")
        cfg.layers = bb.check_layers(cfg.layers if cfg.layers is not None else bb.track_layers())
        if cfg.num_steps is None:
            cfg.num_steps = bb.default_track_step[1]
        if cfg.steps is None:
            cfg.steps = [bb.default_track_step[0]]
        check_noising(cfg.noise, cfg.steps, cfg.num_steps)
        if cfg.window is None:
            cfg.window = bb.frame_window
        if cfg.temporal not in TEMPORAL_MODES:
            raise UserError(f"unknown temporal mode {cfg.temporal!r}; choose one of {', '.join(TEMPORAL_MODES)}")
        if cfg.noise_draws < 1 or cfg.candidates < 1 or not cfg.motion_sigma > 0:
            raise UserError("noise_draws and candidates must be at least 1 and motion_sigma positive, got "
                            f"{cfg.noise_draws}, {cfg.candidates} and {cfg.motion_sigma}")
        if not 0 <= cfg.background_weight <= 1 or not cfg.background_sigma > 0:
            raise UserError("background_weight must lie in [0, 1] and background_sigma be positive, got "
                            f"{cfg.background_weight} and {cfg.background_sigma}")
        if not cfg.presence_weight >= 0:
            raise UserError(f"presence_weight must be a number >= 0, got {cfg.presence_weight}")
        self.config = cfg
        self.stats = TrackerStats()
        self._conditioning = None  # the empty prompt's (embeddings, extras), computed once

    # ----- public API ----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, video: np.ndarray, queries: np.ndarray, progress: bool = False):
        video, queries = check_video_and_queries(video, queries)
        num_frames, height, width = video.shape[:3]
        latents, geometry = self.encode(video)
        state = TrackState.start(queries, geometry, num_frames)
        windows = frame_windows(num_frames, self.config.window)
        self.stats.windows = windows
        passes = [(windows, +1)]
        if (queries[:, 0] > 0).any():
            passes.append((windows[::-1], -1))
        # The bar counts forwards, as the run's summary does: a window no track needs costs none, and leaves
        # the bar's total when it is skipped.
        per_window = self.forwards_per_window()
        bar = tqdm(total=sum(len(w) for w, _ in passes) * per_window, desc="tracking", unit="forward",
                   disable=not progress)
        for ordered, direction in passes:
            state.restart()
            for frames in ordered:
                if self.track_window(latents[:, frames], geometry, frames, direction, state):
                    bar.update(per_window)
                else:
                    bar.total -= per_window
                    bar.refresh()
        bar.close()
        self.diagnostics = {"cycle_error": state.cycle_error, "peak": state.peak, "hidden": state.hidden}
        return self.result(state, num_frames)

    def result(self, state: "TrackState", frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Tracks (frames, N, 2) and visibility (frames, N) of the first ``frames`` frames of ``state``;
        each query is itself, visible, on its own frame."""
        tracks = state.tracks[:frames].copy()
        visible = ~state.hidden[:frames] & self.occlusion_call(state.cycle_error[:frames], state.peak[:frames])
        query_frames = state.queries[:, 0].astype(int)
        seen = np.nonzero(query_frames < frames)[0]
        tracks[query_frames[seen], seen] = state.queries[seen, 1:]
        visible[query_frames[seen], seen] = True
        return tracks, visible

    def track_window(self, window_latents, geometry, frames: list[int], direction: int, state: "TrackState") -> bool:
        """Extend every track whose current end lies in ``frames`` (and has frames left there in ``direction``)
        to the window's far end; ``window_latents`` are the latents of ``frames``. Skips the forwards when no
        track needs the window, and says whether it ran them. A track that ends a window occluded starts the next one occluded, matched with
        the descriptor of the last frame it was seen on (the frame it starts from shows its occluder)."""
        last = frames[-1] if direction > 0 else frames[0]
        ends = state.end_frame
        active = np.nonzero((ends >= min(frames)) & (ends <= max(frames)) & (ends != last))[0]
        if not len(active):
            return False
        q_all, k_all = self._descriptors(window_latents, frames)
        groups = sorted(set(zip(ends[active].tolist(), state.end_hidden[active].tolist())))
        for start_frame, start_hidden in groups:
            idx = active[(ends[active] == start_frame) & (state.end_hidden[active] == start_hidden)]
            targets = list(range(start_frame + direction, last + direction, direction))
            anchor = state.anchors[:, idx].to(q_all) if start_hidden else None
            xy, hidden, cycle_error, peak, anchor = self._extend(
                q_all, k_all, geometry, frames, start_frame, targets, torch.from_numpy(state.end_xy[idx]), anchor)
            for j, f in enumerate(targets):
                state.tracks[f, idx] = geometry.token_to_pixel(xy[:, j].numpy())
                state.hidden[f, idx] = hidden[:, j].numpy()
                state.cycle_error[f, idx] = cycle_error[:, j].numpy()
                state.peak[f, idx] = peak[:, j].numpy()
            state.end_frame[idx] = last
            state.end_xy[idx] = xy[:, -1].numpy()
            state.end_hidden[idx] = hidden[:, -1].numpy()
            state.keep_anchors(idx, anchor)
        return True

    def forwards_per_window(self) -> int:
        """Transformer forwards one window costs: one per step and noise draw (clean and inverted latents
        take one draw)."""
        cfg = self.config
        return len(cfg.steps) * (cfg.noise_draws if cfg.noise == "add" else 1)

    def meta(self) -> dict:
        return {"tracker": self.name, "model": self.backbone.name, "device": str(self.backbone.device),
                "dtype": str(self.backbone.dtype).removeprefix("torch."), **asdict(self.config),
                "forwards": self.stats.forwards, "layers_run": self.stats.layers_run}

    def encode(self, video: np.ndarray):
        """Latents (one latent frame per RGB frame) and token geometry of a uint8 video (T, H, W, 3)."""
        bb = self.backbone
        num_frames, height, width = video.shape[:3]
        latents = bb.encode_frames(video, frame_as_latent=True)
        if self._conditioning is None:
            self._conditioning = bb.empty_conditioning()
        geometry = bb.geometry(latents, self._conditioning[0].shape[1], frame_size=(height, width),
                               frame_as_latent=True, rgb_frames=num_frames)
        return latents, geometry

    # ----- internals -----------------------------------------------------------------------------
    def _descriptors(self, window_latents, frames: list[int]):
        """q/k of every chosen (layer, step, noise draw) of one window, stacked along the head axis:
        (H_total, F_window * P, D)."""
        cfg, bb = self.config, self.backbone
        qs, ks = [], []
        noise_shape = window_latents.shape
        window_latents = bb.frames_as_tokens(window_latents)
        for draw in range(cfg.noise_draws):
            noise = bb.frames_as_tokens(frame_noise(noise_shape, frames, cfg.seed, draw).to(window_latents))
            for step in cfg.steps:
                x, t = prepare_latents(bb, window_latents, cfg.noise, step, cfg.num_steps, noise, self._conditioning)
                with DescriptorCapture(bb, cfg.layers, early_exit=True) as cap:
                    embeds, extras = self._conditioning
                    cap.run(bb.predict, x, t, embeds, **extras)
                self.stats.forwards += 1
                self.stats.layers_run += max(cfg.layers) + 1
                for layer in cfg.layers:
                    d = cap.results[(layer, 0)]
                    qs.append(d.query[0])
                    ks.append(d.key[0])
            if cfg.noise != "add":
                break  # clean and inverted latents do not depend on a noise draw
        return torch.cat(qs), torch.cat(ks)

    def _extend(self, q_all, k_all, geometry, frames, start_frame, targets, start_xy, anchor=None):
        """Positions (n, F_t, 2) in token units, hidden (n, F_t), cycle error and peak on the ``targets``
        frames of a window, for tracks at ``start_xy`` (n, 2) on ``start_frame``, and each track's descriptor
        (H, n, D) on the last target frame it is visible on. ``anchor`` (H, n, D): the tracks start occluded
        and are matched with these descriptors."""
        cfg = self.config
        grid = (geometry.grid_h, geometry.grid_w)
        tokens = geometry.tokens_per_frame
        src = frames.index(start_frame)
        local = [frames.index(f) for f in targets]
        start_xy = start_xy.to(q_all.device)
        start_hidden = anchor is not None
        reverse = None
        if cfg.bidirectional and not start_hidden:  # an occluded start has no token of its own to match back from
            nearest = geometry.nearest_token(geometry.token_to_pixel(start_xy.cpu().numpy()))
            reverse = (q_all, torch.from_numpy(nearest).to(q_all.device))
        query = anchor if start_hidden else sample_descriptors(q_all[:, src * tokens:(src + 1) * tokens], start_xy, grid)
        fwd = match(query, k_all, grid, src, reverse=reverse, window=cfg.refine_window, backend=cfg.backend,
                    candidates=cfg.candidates if cfg.temporal == "viterbi" else 0)
        # Without a soft-argmax a match is a token centre; the point keeps its own place inside the token.
        offset = start_xy - start_xy.floor() - 0.5 if cfg.refine_window == 0 else torch.zeros_like(start_xy)
        if cfg.temporal == "viterbi":
            model = MotionModel(sigma=cfg.motion_sigma, emission_weight=cfg.emission_weight,
                                occluded_log_cost=cfg.occluded_log_cost, background_weight=cfg.background_weight,
                                background_sigma=cfg.background_sigma, presence_weight=cfg.presence_weight)
            positions = self._positions(fwd.candidate_index, fwd.candidate_refined, local, grid) + offset[:, None, None]
            costs = fwd.candidate_cost[:, local].float()
            background_steps = None
            if cfg.background_weight:
                shift = dominant_shift(q_all, k_all, grid, src, local)  # (F_t, 2) from the start frame
                background_steps = torch.diff(shift, dim=0, prepend=torch.zeros_like(shift[:1]))
                # one more candidate per frame: exactly where the dominant motion takes the point
                follow = start_xy[:, None] + shift[None]
                positions = torch.cat([positions, follow[:, :, None]], 2)
                costs = torch.cat([costs, cost_at(follow, fwd.candidate_index[:, local], costs, grid)[..., None]], 2)
            mass = fwd.mass_frames[:, local].float()
            presence = mass / mass.amax(1, keepdim=True).clamp_min(1e-30)
            xy, hidden = viterbi_decode(start_xy, positions, costs, model, background_steps, presence,
                                        torch.full((len(start_xy),), start_hidden, device=start_xy.device),
                                        bounds=(grid[1], grid[0]))
        else:
            xy = self._positions(fwd.argmax, fwd.refined, local, grid) + offset[:, None]
            hidden = torch.zeros(xy.shape[:2], dtype=torch.bool, device=xy.device)
        hidden = hidden | outside_frame(xy, (grid[1], grid[0]))
        peak = fwd.peak[:, local].float()

        # Descriptors of the token under each predicted position (a sub-token sample near an occluder's edge
        # would blend in the occluder): the forward-backward cycle starts from them, and a track keeps the one
        # of the last frame it is seen on.
        n, nf = xy.shape[:2]
        centres = xy.floor() + 0.5
        centres = torch.stack([centres[..., 0].clamp(0.5, grid[1] - 0.5), centres[..., 1].clamp(0.5, grid[0] - 0.5)], -1)
        back_queries = torch.cat([sample_descriptors(q_all[:, j * tokens:(j + 1) * tokens], centres[:, i], grid)
                                  for i, j in enumerate(local)], dim=1)  # (H, nf * n, D), frame-major
        if start_hidden:
            cycle_error = torch.zeros(n, nf, device=xy.device)  # no frame where the point is seen to return to
        else:
            start_keys = k_all[:, src * tokens:(src + 1) * tokens]
            back = match(back_queries, start_keys, grid, 0, window=cfg.refine_window, backend=cfg.backend)
            back_xy = back.refined[:, 0].float().view(nf, n, 2).transpose(0, 1)
            cycle_error = (back_xy - (start_xy - offset)[:, None].to(back_xy)).norm(dim=-1)

        points = torch.arange(n, device=xy.device)
        last_seen = torch.where(~hidden, torch.arange(nf, device=xy.device), -1).amax(1)  # (n,)
        kept = back_queries[:, last_seen.clamp_min(0) * n + points]  # (H, n, D)
        kept = torch.where((last_seen >= 0)[None, :, None], kept, query.to(kept))
        return xy.cpu(), hidden.cpu(), cycle_error.cpu(), peak.cpu(), kept

    def _positions(self, index, refined, local: list[int], grid) -> torch.Tensor:
        """Token positions of matches on the ``local`` frames: the soft-argmax, or with ``refine_window=0`` the
        matched token's centre itself (exact, where a one-token soft-argmax w * c / w may round)."""
        if self.config.refine_window:
            return refined[:, local].float()
        return window_tokens(index[:, local], *grid, 0)[2][..., 0, :].to(refined.device)

    def occlusion_call(self, cycle_error: np.ndarray, peak: np.ndarray) -> np.ndarray:
        """Visible where the forward-backward error is small and the matching peak is confident."""
        return (cycle_error <= self.config.cycle_threshold) & (peak >= self.config.peak_threshold)


def dominant_shift(q_all, k_all, grid, src: int, targets: list[int], memory_budget: int = 64 * 2**20) -> torch.Tensor:
    """The scene's dominant displacement (len(targets), 2) as (x, y) tokens from frame ``src`` to each target
    frame: the displacement d that maximises the mean head-averaged matching cost C(i -> i + d) over every
    token i of the source frame (displacements of up to half the grid), refined to sub-token by a parabola
    through its neighbours."""
    grid_h, grid_w = grid
    tokens = grid_h * grid_w
    heads, _, dim = q_all.shape
    device = q_all.device
    rows, cols = torch.meshgrid(torch.arange(grid_h, device=device), torch.arange(grid_w, device=device), indexing="ij")
    d_row, d_col = torch.meshgrid(torch.arange(-(grid_h // 2), grid_h // 2 + 1, device=device),
                                  torch.arange(-(grid_w // 2), grid_w // 2 + 1, device=device), indexing="ij")
    to_row = rows.reshape(-1, 1) + d_row.reshape(1, -1)  # (P, D)
    to_col = cols.reshape(-1, 1) + d_col.reshape(1, -1)
    valid = (to_row >= 0) & (to_row < grid_h) & (to_col >= 0) & (to_col < grid_w)
    to_index = to_row.clamp(0, grid_h - 1) * grid_w + to_col.clamp(0, grid_w - 1)
    query = q_all[:, src * tokens:(src + 1) * tokens].float() / dim ** 0.5
    head_chunk = max(1, memory_budget // (tokens * tokens * 4))  # heads whose token-to-token costs fit the budget
    shifts = []
    for f in targets:
        key = k_all[:, f * tokens:(f + 1) * tokens].float()
        cost = torch.zeros(tokens, tokens, device=device)
        for h0 in range(0, heads, head_chunk):
            cost += torch.softmax(torch.bmm(query[h0:h0 + head_chunk], key[h0:h0 + head_chunk].transpose(1, 2)),
                                  -1).sum(0)
        volume = ((cost.gather(1, to_index) * valid).sum(0) / valid.sum(0)).view(d_row.shape)
        best_row, best_col = divmod(int(volume.argmax()), volume.shape[1])
        shift = [float(d_col[0, best_col]) + _parabola_peak(volume[best_row], best_col),
                 float(d_row[best_row, 0]) + _parabola_peak(volume[:, best_col], best_row)]
        shifts.append(shift)
    return torch.tensor(shifts, dtype=torch.float32, device=device)


def _parabola_peak(values: torch.Tensor, at: int) -> float:
    """Sub-sample offset in [-0.5, 0.5] of the peak of a parabola through the logs of ``values`` (> 0) at
    at - 1, at, at + 1: exact for a Gaussian peak, which a softmax of logits quadratic near their maximum
    is (a parabola through the values themselves biases every estimate towards the sample, and chained
    windows add the biases up)."""
    if at == 0 or at == len(values) - 1:
        return 0.0
    # A neighbour under a thousandth of the peak (7 logits below it) says nothing about the peak's shape (a sharp
    # peak over noise, not a Gaussian one): floored there, two such neighbours leave the peak on its sample.
    floor = 1e-3 * float(values[at])
    left, middle, right = (math.log(max(float(v), floor, 1e-30)) for v in values[at - 1:at + 2])
    curvature = left - 2.0 * middle + right
    return 0.0 if curvature >= 0 else max(-0.5, min(0.5, 0.5 * (left - right) / curvature))


def cost_at(xy: torch.Tensor, candidate_index: torch.Tensor, candidate_cost: torch.Tensor, grid) -> torch.Tensor:
    """Cost (N, F) of the token under each position xy (N, F, 2), read from the candidates (N, F, K); a
    token outside them gets the smallest candidate cost, an upper bound; a position outside the frame 0."""
    grid_h, grid_w = grid
    inside = (xy[..., 0] >= 0) & (xy[..., 0] < grid_w) & (xy[..., 1] >= 0) & (xy[..., 1] < grid_h)
    col = xy[..., 0].floor().long().clamp(0, grid_w - 1)
    row = xy[..., 1].floor().long().clamp(0, grid_h - 1)
    hit = candidate_index == (row * grid_w + col)[..., None]
    found = (candidate_cost * hit).amax(-1)
    return torch.where(inside, torch.where(hit.any(-1), found, candidate_cost.amin(-1)), 0.0)


@dataclass
class TrackState:
    """Tracks being built, in pixels, and the end each track has reached in the current pass."""

    queries: np.ndarray
    start_xy: np.ndarray  # (N, 2) query positions in token units
    tracks: np.ndarray  # (T, N, 2) pixels
    hidden: np.ndarray  # (T, N) occluded state of the temporal decoder
    cycle_error: np.ndarray  # (T, N) tokens
    peak: np.ndarray  # (T, N)
    end_frame: np.ndarray | None = None
    end_xy: np.ndarray | None = None
    end_hidden: np.ndarray | None = None
    anchors: torch.Tensor | None = None  # (H, N, D): each track's descriptor where it was last seen

    def keep_anchors(self, idx: np.ndarray, descriptors: torch.Tensor) -> None:
        if self.anchors is None:
            heads, _, dim = descriptors.shape
            self.anchors = descriptors.new_zeros(heads, len(self.queries), dim)
        self.anchors[:, torch.from_numpy(idx).to(self.anchors.device)] = descriptors.to(self.anchors)

    @classmethod
    def start(cls, queries: np.ndarray, geometry, num_frames: int) -> "TrackState":
        n = len(queries)
        state = cls(queries=queries, start_xy=geometry.pixel_to_token(queries[:, 1:]).astype(np.float32),
                    tracks=np.zeros((0, n, 2), np.float32), hidden=np.zeros((0, n), bool),
                    cycle_error=np.zeros((0, n), np.float32), peak=np.ones((0, n), np.float32))
        state.grow(num_frames)
        return state

    def grow(self, num_frames: int) -> None:
        """Room for ``num_frames`` frames (online tracking learns the length as frames arrive)."""
        extra = num_frames - len(self.tracks)
        if extra > 0:
            n = self.tracks.shape[1]
            self.tracks = np.concatenate([self.tracks, np.zeros((extra, n, 2), np.float32)])
            self.hidden = np.concatenate([self.hidden, np.zeros((extra, n), bool)])
            self.cycle_error = np.concatenate([self.cycle_error, np.zeros((extra, n), np.float32)])
            self.peak = np.concatenate([self.peak, np.ones((extra, n), np.float32)])

    def restart(self) -> None:
        """Every track starts the pass at its query."""
        self.end_frame = self.queries[:, 0].astype(int).copy()
        self.end_xy = self.start_xy.copy()
        self.end_hidden = np.zeros(len(self.queries), bool)


class DiffTrackerOnline:
    """Track through a stream of frames chunk by chunk, CoTracker-online style, with memory bounded by one
    window of latents (plus the tracks themselves).

    ``reset(queries, height, width)``, then ``step(frames)`` with each new chunk of uint8 RGB frames
    (t, H, W, 3) returns the tracks (T_seen, N, 2) and visibility (T_seen, N) known so far, up to the
    last finished window; ``finish()`` tracks the rest and returns the whole result. Tracks run forward
    from each query's frame; before it a track holds its query point, not visible. For queries on
    frame 0 the result equals :class:`DiffTracker`'s on the whole video (same windows, same noise).
    """

    def __init__(self, model: str | Backbone = DEFAULT_BACKBONE, config: TrackerConfig | None = None,
                 device=None, dtype=None, **overrides):
        self.tracker = model if isinstance(model, DiffTracker) else DiffTracker(model, config, device, dtype,
                                                                                **overrides)
        self.state = None

    def reset(self, queries: np.ndarray, height: int, width: int) -> None:
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, 3)
        if len(queries) == 0:
            raise UserError("no query points given; pass at least one (t, x, y) point")
        check_points(queries, np.inf, height, width)
        self.size = (height, width)
        self.queries = queries
        self.latents = None  # the last window's frames at most
        self.first_frame = 0  # global index of self.latents[:, 0]
        self.frames_seen = 0
        self.next_start = 0  # first frame of the next regular window
        self.geometry = None
        self.state = None

    @torch.no_grad()
    def step(self, frames: np.ndarray):
        if not hasattr(self, "queries"):
            raise UserError("call reset(queries, height, width) before step(frames)")
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:3] != self.size or frames.shape[-1] != 3:
            raise UserError(f"frames must be RGB (t, {self.size[0]}, {self.size[1]}, 3), got {frames.shape}")
        latents, geometry = self.tracker.encode(frames)
        if self.state is None:
            self.geometry = geometry
            self.state = TrackState.start(self.queries, geometry, 0)
            self.state.restart()
        self.latents = latents if self.latents is None else torch.cat([self.latents, latents], 1)
        self.frames_seen += len(frames)
        self.state.grow(self.frames_seen)
        window = self.tracker.config.window
        while self.next_start + window <= self.frames_seen:
            self._run(list(range(self.next_start, self.next_start + window)))
            self.next_start += window - 1
        keep = self.frames_seen - min(self.frames_seen, window)  # the last window's frames stay for finish()
        self.latents = self.latents[:, keep - self.first_frame:]
        self.first_frame = keep
        return self._result(self.next_start + 1 if self.next_start else 0)

    def finish(self):
        """Track the frames after the last regular window (the offline tracker's end-aligned last window)."""
        window = self.tracker.config.window
        last_covered = self.next_start if self.next_start else -1
        if self.frames_seen - 1 > last_covered:
            start = max(0, self.frames_seen - window)
            self._run(list(range(start, self.frames_seen)))
        return self._result(self.frames_seen)

    def _run(self, frames: list[int]) -> None:
        local = [f - self.first_frame for f in frames]
        self.tracker.track_window(self.latents[:, local], self.geometry, frames, +1, self.state)

    def _result(self, frames: int):
        tracks, visible = self.tracker.result(self.state, frames)
        for n, t in enumerate(self.queries[:, 0].astype(int)):  # online tracking runs forward only
            tracks[:min(t, frames), n] = self.queries[n, 1:]
            visible[:min(t, frames), n] = False
        return tracks, visible



def create_tracker(tracker: str | None = None, model: str | Backbone = DEFAULT_BACKBONE, device=None, dtype=None,
                   **options):
    """The tracker named ``tracker`` on ``model``: "paper" (the paper's procedure,
    :class:`difftrack.paper_tracker.PaperTracker`) or "difftrack" (:class:`DiffTracker`); None: the model's own
    default (difftrack's tracker where it is calibrated for the model, the paper's otherwise)."""
    from difftrack.paper_tracker import PaperTracker

    backbone = as_backbone(model, device, dtype)
    tracker = tracker or backbone.default_tracker
    if tracker not in TRACKERS:
        raise UserError(f"unknown tracker {tracker!r}; choose one of {', '.join(TRACKERS)}")
    return (PaperTracker if tracker == "paper" else DiffTracker)(backbone, **options)


class DiffTrackerPredictor(torch.nn.Module):
    """CoTracker-style predictor: ``forward(video (B, T, 3, H, W) in [0, 255], queries (B, N, 3) as (t, x, y))``
    returns tracks (B, T, N, 2) and visibility (B, T, N). ``tracker`` as :func:`create_tracker` takes it."""

    def __init__(self, model: str | Backbone = DEFAULT_BACKBONE, tracker: str | None = None, device=None,
                 dtype=None, **options):
        super().__init__()
        self.tracker = create_tracker(tracker, model, device, dtype, **options)

    @torch.no_grad()
    def forward(self, video: torch.Tensor, queries: torch.Tensor):
        tracks, visibility = [], []
        for b in range(video.shape[0]):
            frames = video[b].permute(0, 2, 3, 1).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
            tr, vis = self.tracker(frames, queries[b].cpu().numpy())
            tracks.append(torch.from_numpy(tr))
            visibility.append(torch.from_numpy(vis))
        return torch.stack(tracks).to(video.device), torch.stack(visibility).to(video.device)
