"""The per-video work of an analysis (see :mod:`difftrack.analysis.runner` for the method):
generate or load a video, capture descriptors per (layer, step), reduce, label and score."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from difftrack.analysis.jobs import AnalysisConfig, VideoJob, generation_size, load_video, release_tracks
from difftrack.analysis.labellers import ExactLabeller, make_labeller
from difftrack.analysis.metrics import StepReducer, pck_thresholds, score_reduction
from difftrack.capture import DescriptorCapture
from difftrack.errors import UserError
from difftrack.evaluation.queries import token_grid
from difftrack.noising import check_noising, prepare_latents


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
        return generation_size(self.backbone, self.config)

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
        known = None  # the release's dataset: the authors' tracks of this prompt, queried where frame 0 shows them
        if "release_tracks" in job.extra:
            tracks, visible = release_tracks(job, (height, width), frames)
            known = tracks[:, visible[0]], visible[:, visible[0]]
            query_xy = geometry.pixel_to_token(known[0][0])
        else:
            query_xy = token_grid(cfg.grid, geometry.grid_h, geometry.grid_w)
        reducer = StepReducer(geometry, query_xy, window=cfg.refine_window, backend=cfg.backend,
                              bidirectional=cfg.bidirectional,
                              **self._figure_selection(geometry, query_xy, want_figures))
        guidance = GuidanceConfig("cfg", cfg.guidance_scale) if cfg.guidance_scale > 1 else GuidanceConfig("none")
        cond_row = [1] if guidance.uses_uncond else [0]  # the sampler batches [uncond, cond]
        with DescriptorCapture(bb, self.layers, steps=self.steps, features=cfg.features, batch_rows=cond_row,
                               on_capture=reducer) as cap:
            def on_step(step_index, _timestep):
                cap.step = int(step_index)

            video = sample(bb, job.prompt, num_frames=frames, height=height, width=width, num_steps=cfg.num_steps,
                           seed=job.seed, guidance=guidance, on_step=on_step, output="uint8", progress=progress)
        if known is not None:
            return video, geometry, reducer, *known
        queries = np.concatenate([np.zeros((len(query_xy), 1)), geometry.token_to_pixel(query_xy)], 1)
        tracks, visible = self.labeller(video, queries.astype(np.float32))
        return video, geometry, reducer, tracks, visible

    # ----- real videos and generator clips -----------------------------------------------------------
    def encode_real(self, video: np.ndarray):
        bb = self.backbone
        num_frames, height, width = video.shape[:3]
        bb.check_frame_count(num_frames)
        latents = bb.encode_frames(video)
        conditioning = bb.empty_conditioning()
        geometry = bb.geometry(latents, conditioning[0].shape[1], frame_size=(height, width), rgb_frames=num_frames)
        return latents, conditioning, geometry

    def analyze_real(self, job: VideoJob, want_figures: bool, progress: bool):
        cfg = self.config
        video, tracks, visible, clip = load_video(job, self.backbone, cfg)
        latents, conditioning, geometry = self.encode_real(video)
        if tracks is None:  # label a token-centre grid: exactly for generator clips, else with the labeller
            query_xy = token_grid(cfg.grid, geometry.grid_h, geometry.grid_w)
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
                              bidirectional=cfg.bidirectional,
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
