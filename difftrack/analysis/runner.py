"""Run the analysis over a list of videos: generated, real (with tracks or labelled), TAP-Vid, generator clips.

Generated videos - reduce on the fly, no replay. Descriptors are captured during the one sampling
run that produces the video (conditional CFG row only) and each captured (layer, step) is reduced
at once by :class:`~difftrack.analysis.metrics.StepReducer` to the predicted correspondences of a
dense grid of frame-0 query tokens plus the joint-attention scores: O(points x frames) per
(layer, step), nothing dense kept. Only after the last step is the video decoded and labelled
(pseudo ground truth at exactly those query points, which sit at token centres) and the kept
predictions scored. Replaying the sampler instead would cost a second generation per video and
would only match the first one bit for bit if every kernel were deterministic; reducing on the fly
measures the very trajectory that produced the video, at the price of choosing the query points
before the video exists (a grid, as the authors' CoTracker grid mode does anyway).

Real videos - encode, then per requested step one forward on noised / clean / inverted latents
(``--noise``), empty prompt, one branch (no CFG duplicate), stopping after the deepest requested
layer. Queries are the ground-truth points visible on frame 0.

Scale-out and resume - videos are sharded ``i % world == rank``; each finished video is written to
``OUT/videos/<id>.json`` atomically (figure arrays first, JSON last, so a JSON marks a complete
video); a restarted run skips every video whose JSON exists with the same configuration key. After
a barrier rank 0 merges the per-video files in list order, so the merged result does not depend on
how many processes ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from difftrack.analysis.labellers import ExactLabeller, make_labeller
from difftrack.analysis.metrics import StepReducer, grid_query_tokens, pck_thresholds, score_reduction
from difftrack.backbones import DEFAULT_BACKBONE
from difftrack.capture import DescriptorCapture
from difftrack.errors import UserError
from difftrack.io import atomic_path, read_video, write_json
from difftrack.noising import check_noising, prepare_latents

VIDEO_DIR = "videos"


@dataclass
class AnalysisConfig:
    """Everything that decides the numbers of one video's analysis (hashed into the resume key)."""

    model: str = DEFAULT_BACKBONE
    layers: list[int] | None = None  # None: every layer
    steps: list[int] | None = None  # None: every step of the schedule
    num_steps: int = 50
    grid: int = 20  # query grid side on frame 0 (snapped to distinct token centres)
    labeller: str = "lk"
    guidance_scale: float = 6.0  # generated videos
    num_frames: int | None = None  # generated videos / real-video frames used; None: the model's window
    height: int | None = None
    width: int | None = None
    frame_stride: int = 1  # real videos: take every n-th frame
    noise: str = "add"  # real videos
    seed: int = 0  # real videos: seed of the added noise
    refine_window: int = 1
    features: bool = True
    backend: str = "auto"
    figure_points: int = 3

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class VideoJob:
    """One video to analyse. ``kind``: generated | video | tapvid | synthetic."""

    kind: str
    name: str
    prompt: str | None = None
    seed: int | None = None
    path: str | None = None
    tracks: str | None = None
    dataset: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.kind}-{self.name}")[:120]

    def describe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}


# ----- inputs --------------------------------------------------------------------------------------
def load_tracks(path: str, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Tracks (T, N, 2) and visibility (T, N) from an npz written by `difftrack track`."""
    if not os.path.isfile(path):
        raise UserError(f"tracks file {path} does not exist; pass the .npz written by `difftrack track`")
    try:
        with np.load(path, allow_pickle=False) as data:
            tracks, visible = np.asarray(data["tracks"], np.float32), np.asarray(data["visibility"], bool)
    except (KeyError, ValueError, OSError) as exc:
        raise UserError(f"tracks file {path} is not an npz with 'tracks' (T, N, 2) and 'visibility' (T, N) "
                        f"({str(exc).splitlines()[0][:80]})") from None
    if tracks.ndim != 3 or tracks.shape[2] != 2 or visible.shape != tracks.shape[:2]:
        raise UserError(f"tracks file {path} holds tracks {tracks.shape} and visibility {visible.shape}; "
                        f"expected (T, N, 2) and (T, N)")
    if tracks.shape[0] != num_frames:
        raise UserError(f"tracks file {path} has {tracks.shape[0]} frames but the video has {num_frames}; "
                        f"pass the tracks of this video")
    return tracks, visible


# ----- the per-video work ----------------------------------------------------------------------------
class Analyzer:
    """Holds the backbone and the validated layer/step selection; ``analyze(job)`` returns one video's record."""

    def __init__(self, backbone, config: AnalysisConfig):
        self.backbone = backbone
        self.config = config
        cfg = config
        self.layers = backbone.check_layers(range(backbone.num_layers) if cfg.layers is None else cfg.layers)
        self.steps = sorted(set(range(max(cfg.num_steps, 0)) if cfg.steps is None else cfg.steps))
        check_noising(cfg.noise, self.steps, cfg.num_steps)
        if cfg.grid < 1:
            raise UserError(f"--grid must be at least 1, got {cfg.grid}")
        if cfg.frame_stride < 1:
            raise UserError(f"--frame-stride must be at least 1, got {cfg.frame_stride}")
        self._labeller = None

    @property
    def labeller(self):
        if self._labeller is None:
            self._labeller = make_labeller(self.config.labeller)
        return self._labeller

    # ----- geometry of generated videos ------------------------------------------------------------
    def generation_size(self) -> tuple[int, int, int]:
        """(frames, height, width) of generated videos: the model's trained sample size unless overridden."""
        bb, cfg = self.backbone, self.config
        frames, height, width = bb.generation_size(cfg.num_frames, cfg.height, cfg.width)
        bb.check_frame_count(frames)
        return frames, height, width

    def _figure_selection(self, geometry, query_xy: np.ndarray, want: bool):
        """Figure points spread along the frame's diagonal, and the first, middle and last latent frames."""
        if not want:
            return {}
        n = self.config.figure_points
        targets = [np.array([geometry.grid_w, geometry.grid_h]) * (i + 1) / (n + 1) for i in range(n)]
        points = sorted({int(np.argmin(np.linalg.norm(query_xy - t, axis=1))) for t in targets})
        frames = sorted({0, geometry.frames // 2, geometry.frames - 1})
        return {"figure": {(layer, self.steps[-1]) for layer in self.figure_layers}, "figure_points": points,
                "figure_frames": frames}

    @property
    def figure_layers(self) -> list[int]:
        """Up to six evenly spaced requested layers get attention-map and PCA figures."""
        idx = np.unique(np.linspace(0, len(self.layers) - 1, min(6, len(self.layers))).round().astype(int))
        return [self.layers[i] for i in idx]

    # ----- generated ---------------------------------------------------------------------------------
    def generate(self, job: VideoJob, want_figures: bool, progress: bool):
        from difftrack.guidance import GuidanceConfig
        from difftrack.sampling import sample

        bb, cfg = self.backbone, self.config
        frames, height, width = self.generation_size()
        c = bb.temporal_compression
        sc = 1 if bb.vae is None else bb.spatial_compression
        latent_shape = (1, (frames - 1) // c + 1, bb.latent_channels, height // sc, width // sc)
        text_tokens = bb.encode_prompt([job.prompt]).shape[1]
        geometry = bb.geometry(torch.empty(latent_shape, device="meta"), text_tokens, frame_size=(height, width),
                               rgb_frames=frames)
        query_xy = grid_query_tokens(geometry, cfg.grid)
        reducer = StepReducer(geometry, query_xy, window=cfg.refine_window, backend=cfg.backend,
                              **self._figure_selection(geometry, query_xy, want_figures))
        guidance = GuidanceConfig("cfg", cfg.guidance_scale) if cfg.guidance_scale > 1 else GuidanceConfig("none")
        cond_row = [1] if guidance.uses_uncond else [0]  # the sampler batches [uncond, cond]
        with DescriptorCapture(bb, self.layers, steps=self.steps, features=cfg.features, batch_rows=cond_row,
                               on_capture=reducer) as cap:
            def on_step(step_index, _timestep):
                cap.step = int(step_index)

            video = sample(bb, job.prompt, num_frames=frames, height=height, width=width, num_steps=cfg.num_steps,
                           seed=job.seed, guidance=guidance, on_step=on_step, output="uint8", progress=progress)
        queries = np.concatenate([np.zeros((len(query_xy), 1)), geometry.token_to_pixel(query_xy)], 1)
        tracks, visible = self.labeller(video, queries.astype(np.float32))
        return video, geometry, reducer, tracks, visible

    # ----- real videos and generator clips -----------------------------------------------------------
    def load_real(self, job: VideoJob):
        """Frames (T, H, W, 3), and tracks (T, N, 2) / visibility (T, N) or None when they must be labelled."""
        cfg = self.config
        clip = None
        if job.kind == "video":
            video, _ = read_video(job.path)
            tracks = visible = None
            if job.tracks:
                tracks, visible = load_tracks(job.tracks, len(video))
        elif job.kind == "tapvid":
            from difftrack.data.tapvid import TapVidReader, to_protocol

            sample_ = TapVidReader(job.dataset, job.path).load(job.name)
            video, points = to_protocol(sample_)
            tracks, visible = points.transpose(1, 0, 2), ~sample_.occluded.T
        elif job.kind == "synthetic":
            from difftrack.data.synthetic import generate_clip

            frames, height, width = self.generation_size()
            clip = generate_clip(job.seed, num_frames=frames, height=height, width=width)
            video, tracks, visible = clip.video, None, None
        else:
            raise ValueError(job.kind)
        window = cfg.num_frames or self.default_real_frames()
        take = np.arange(0, len(video), cfg.frame_stride)[:window]
        if clip is not None and len(take) != len(video):
            raise UserError("generator clips are rendered at the model's length; drop --frames/--frame-stride")
        video = video[take]
        if tracks is not None:
            tracks, visible = tracks[take], visible[take]
        return video, tracks, visible, clip

    def default_real_frames(self) -> int:
        bb = self.backbone
        return (bb.max_frames - 1) * bb.temporal_compression + 1

    def encode_real(self, video: np.ndarray):
        bb = self.backbone
        num_frames, height, width = video.shape[:3]
        bb.check_frame_count(num_frames)
        latents = bb.encode_frames(video)
        conditioning = bb.encode_conditioning([""])
        geometry = bb.geometry(latents, conditioning[0].shape[1], frame_size=(height, width), rgb_frames=num_frames)
        return latents, conditioning, geometry

    def analyze_real(self, job: VideoJob, want_figures: bool, progress: bool):
        cfg = self.config
        video, tracks, visible, clip = self.load_real(job)
        latents, conditioning, geometry = self.encode_real(video)
        if tracks is None:  # label a token-centre grid: exactly for generator clips, else with the labeller
            query_xy = grid_query_tokens(geometry, cfg.grid)
            queries = np.concatenate([np.zeros((len(query_xy), 1)), geometry.token_to_pixel(query_xy)], 1)
            labeller = ExactLabeller(clip) if clip is not None else self.labeller
            tracks, visible = labeller(video, queries.astype(np.float32))
        else:
            keep = visible[0]
            if not keep.any():
                raise UserError(f"{job.name}: no ground-truth point is visible on frame 0, where the analysis "
                                f"queries; pass tracks with points visible on the first frame")
            tracks, visible = tracks[:, keep], visible[:, keep]
            query_xy = geometry.pixel_to_token(tracks[0])
        reducer = StepReducer(geometry, query_xy, window=cfg.refine_window, backend=cfg.backend,
                              **self._figure_selection(geometry, query_xy, want_figures))
        self.reduce_steps(latents, conditioning, reducer, desc=f"analysing {job.name}", progress=progress)
        return video, geometry, reducer, tracks, visible

    def reduce_steps(self, latents, conditioning, reducer, desc="analysing", progress=False) -> None:
        """Per requested step: bring clean ``latents`` to it (``noise`` mode), one forward with the empty
        prompt's ``conditioning`` (embeddings, extras), stopping after the deepest requested layer;
        ``reducer`` keeps the reductions."""
        bb, cfg = self.backbone, self.config
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(cfg.seed)).to(latents)
        for step in tqdm(self.steps, desc=desc, unit="step", disable=not progress, leave=False):
            x, t = prepare_latents(bb, latents, cfg.noise, step, cfg.num_steps, noise, conditioning)
            with DescriptorCapture(bb, self.layers, features=cfg.features, early_exit=True,
                                   on_capture=reducer) as cap:
                cap.step = step
                cap.run(bb.predict, x, t, conditioning[0], **conditioning[1])

    # ----- one video ---------------------------------------------------------------------------------
    def analyze(self, job: VideoJob, want_figures: bool = False, progress: bool = False):
        """Returns (record for results.json, figure arrays or None)."""
        start = time.perf_counter()
        if job.kind == "generated":
            video, geometry, reducer, tracks, visible = self.generate(job, want_figures, progress)
        else:
            video, geometry, reducer, tracks, visible = self.analyze_real(job, want_figures, progress)
        num_frames, height, width = video.shape[:3]
        thresholds = pck_thresholds(geometry, height, width)
        table: dict[str, np.ndarray] = {}
        for i, layer in enumerate(self.layers):
            for j, step in enumerate(self.steps):
                scores = score_reduction(reducer.reductions[(layer, step)], geometry, tracks, visible, thresholds)
                for name, value in scores.items():
                    table.setdefault(name, np.full((len(self.layers), len(self.steps)), np.nan))[i, j] = value
        record = {**job.describe(), "id": job.id, "frames": num_frames, "height": height, "width": width,
                  "latent_frames": geometry.frames, "grid": [geometry.grid_h, geometry.grid_w],
                  "points": int(tracks.shape[1]), "visible_fraction": float(visible.mean()),
                  "thresholds_px": thresholds, "seconds": round(time.perf_counter() - start, 3),
                  "metrics": {name: values.tolist() for name, values in table.items()}}
        figures = None
        if want_figures and reducer.figures:
            figures = self._figure_payload(reducer, geometry, video, tracks, visible)
        return record, figures

    def _figure_payload(self, reducer, geometry, video, tracks, visible) -> dict[str, np.ndarray]:
        frames = reducer.figure_frames
        rgb = [int(geometry.latent_to_rgb_frame(f)) for f in frames]
        pts = reducer.figure_points
        out = {"layers": np.array(self.figure_layers), "step": np.array(self.steps[-1]), "latent_frames": np.array(frames),
               "rgb_frames": np.array(rgb), "images": video[rgb], "query_px": tracks[0, pts],
               "truth_px": tracks[rgb][:, pts], "truth_visible": visible[rgb][:, pts],
               "stride_px": np.array(geometry.stride_px)}
        for layer in self.figure_layers:
            for name, arr in reducer.figures[(layer, self.steps[-1])].items():
                out[f"{name}_{layer}"] = arr
            red = reducer.reductions[(layer, self.steps[-1])]
            out[f"qk_px_{layer}"] = geometry.token_to_pixel(red.qk_xy[pts][:, frames])
        return out


# ----- orchestration --------------------------------------------------------------------------------
def _dist():
    """(rank, world); joins the process group torchrun set up (gloo on CPU, NCCL on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _barrier(world: int):
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def video_paths(out: Path, job: VideoJob) -> tuple[Path, Path]:
    return out / VIDEO_DIR / f"{job.id}.json", out / VIDEO_DIR / f"{job.id}.figures.npz"


def is_done(out: Path, job: VideoJob, key: str) -> bool:
    path = video_paths(out, job)[0]
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("config_key") == key
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def run_analysis(analyzer: Analyzer, jobs: list[VideoJob], out: str | Path, accuracy: str = "qk_pck",
                 top: int = 3, progress: bool = True, after_video=None) -> dict | None:
    """Analyse ``jobs`` (sharded over torchrun ranks), then merge and write the report (rank 0).

    Returns the merged results on rank 0 and None on other ranks. ``after_video(job)`` is called after
    each video's files are written (tests use it to simulate a kill).
    """
    from difftrack.analysis.report import write_report

    if not jobs:
        raise UserError("nothing to analyse: give --prompts, --video, --tapvid or --synthetic-seeds")
    ids = [j.id for j in jobs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[0]
        raise UserError(f"two videos would share the name {dup}; give each prompt/seed/video once")
    backbone, config = analyzer.backbone, analyzer.config
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory")
    rank, world = _dist()
    key = config.key()
    mine = [(i, j) for i, j in enumerate(jobs) if i % world == rank]
    for index, job in tqdm(mine, desc=f"videos (rank {rank}/{world})", unit="video", disable=not progress):
        if is_done(out, job, key):
            continue
        record, figures = analyzer.analyze(job, want_figures=index == 0, progress=progress)
        record["config_key"] = key
        json_path, npz_path = video_paths(out, job)
        json_path.parent.mkdir(parents=True, exist_ok=True)  # only now: a video that fails leaves no directory
        if figures is not None:
            with atomic_path(npz_path, suffix=".npz") as tmp:
                np.savez_compressed(tmp, **figures)
        write_json(json_path, record)
        if after_video is not None:
            after_video(job)
    _barrier(world)
    merged = None
    if rank == 0:
        records = [json.loads(video_paths(out, j)[0].read_text()) for j in jobs]
        merged = write_report(out, records, backbone, config, analyzer.layers, analyzer.steps, accuracy, top,
                              figures_path=video_paths(out, jobs[0])[1])
    _barrier(world)
    return merged
