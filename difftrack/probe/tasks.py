"""The probe's tasks on generator clips, scored against the generator's exact ground truth.

- ``masks``: DAVIS-style propagation of frame 0's sprite masks (J, F, J&F);
- ``keypoints``: JHMDB-style propagation of frame-0 keypoints on each sprite (PCK@0.1, PCK@0.2 of
  the sprite's box);
- ``tracking``: zero-shot tracking of a frame-0 grid with :class:`DiffTracker` on the block's q/k
  (TAP-Vid delta_avg and AJ in 'first' mode, and delta_avg on points that moved more than a token);
- ``semantic``: the per-frame linear probe of :mod:`difftrack.probe.semantic` (shape and texture
  accuracy on held-out videos).

``evaluate_grid`` runs every task for each (block, step) of a backbone with one feature forward
per clip and step (all blocks captured at once); ``evaluate_references`` scores training-free
references that need no model: raw pixel patches as features and the zero-motion tracker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from difftrack.data.synthetic import SHAPES, TEXTURES, Clip, generate_clip
from difftrack.errors import UserError
from difftrack.evaluation.queries import query_grid
from difftrack.evaluation.scoring import LabelledVideo, score_tracker
from difftrack.probe import TASKS
from difftrack.probe.features import FeatureSpec, extract_features, is_image_model, token_grid
from difftrack.probe.propagation import (
    KEYPOINT_DEFAULTS,
    MASK_DEFAULTS,
    PropagationConfig,
    mask_scores,
    pck,
    propagate_keypoints,
    propagate_mask,
)
from difftrack.probe.semantic import PooledSamples, pool_sprites, probe_accuracy

# (record key, column title) of each task's headline metrics, in table order.
TASK_METRICS = {
    "masks": [("masks_J&F", "masks J&F"), ("masks_J", "masks J"), ("masks_F", "masks F")],
    "keypoints": [("keypoints_PCK@0.1", "kp PCK@0.1"), ("keypoints_PCK@0.2", "kp PCK@0.2")],
    "tracking": [("tracking_delta_avg", "track d_avg"), ("tracking_delta_avg_moved", "track d_avg moved"),
                 ("tracking_AJ", "track AJ")],
    "semantic": [("semantic_shape_acc", "shape acc"), ("semantic_texture_acc", "texture acc")],
}
HEADLINE = {"masks": "masks_J&F", "keypoints": "keypoints_PCK@0.1", "tracking": "tracking_delta_avg_moved",
            "semantic": "semantic_shape_acc"}
MIN_OBJECT_PX = 16  # a sprite needs this many visible pixels in frame 0 (one token at 64x64) to be propagated
KEYPOINTS_PER_SPRITE = 5
TRACK_GRID = 8
MOVED_TOKENS = 1.0  # "moved" points: more than this many tokens from where they were queried, in x or in y


@dataclass
class TaskOptions:
    tasks: tuple[str, ...] = TASKS
    kind: str = "block"  # activation kind for propagation and the semantic probe
    mask_config: PropagationConfig = MASK_DEFAULTS
    keypoint_config: PropagationConfig = KEYPOINT_DEFAULTS
    num_steps: int = 50
    noise: str = "add"
    seed: int = 0
    window: int | None = None


def make_clips(seeds, num_frames: int = 8, size: int = 64) -> list[Clip]:
    return [generate_clip(int(s), num_frames=num_frames, height=size, width=size) for s in seeds]


def check_tasks(tasks) -> tuple[str, ...]:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise UserError(f"unknown task {', '.join(unknown) or '(none given)'}; choose from {', '.join(TASKS)}")
    return tuple(tasks)


# ----- per-clip tasks ------------------------------------------------------------------------

def first_frame_objects(clip: Clip) -> tuple[np.ndarray, list[int]]:
    """Frame 0's label image (0 = wall, s + 1 = sprite s) and the ids of sprites large enough to propagate."""
    masks = clip.masks[0]
    label_map = np.zeros(clip.size, np.int64)
    for s in range(len(masks)):
        label_map[masks[s]] = s + 1
    return label_map, [s + 1 for s in range(len(masks)) if masks[s].sum() >= MIN_OBJECT_PX]


def mask_task(feature_map: np.ndarray, clip: Clip, config: PropagationConfig) -> dict[str, float] | None:
    label_map, objects = first_frame_objects(clip)
    if not objects:
        return None
    pred = propagate_mask(feature_map, label_map, clip.size, config)
    return {f"masks_{k}": v for k, v in mask_scores(pred, clip.masks, objects).items()}


def keypoint_queries(clip: Clip, per_sprite: int = KEYPOINTS_PER_SPRITE) -> tuple[np.ndarray, np.ndarray]:
    """Well-spread frame-0 keypoints on each propagated sprite (farthest-point sampling of its visible pixel
    centres, from the pixel nearest its centroid): points (K, 2) pixel (x, y) and the sprite index of each."""
    _, objects = first_frame_objects(clip)
    points, owners = [], []
    for obj in objects:
        ys, xs = np.nonzero(clip.masks[0, obj - 1])
        pix = np.stack([xs + 0.5, ys + 0.5], -1)
        chosen = [int(np.argmin(np.linalg.norm(pix - pix.mean(0), axis=1)))]
        dist = np.linalg.norm(pix - pix[chosen[0]], axis=1)
        while len(chosen) < min(per_sprite, len(pix)):
            chosen.append(int(np.argmax(dist)))
            dist = np.minimum(dist, np.linalg.norm(pix - pix[chosen[-1]], axis=1))
        points.append(pix[chosen])
        owners += [obj - 1] * len(chosen)
    if not points:
        return np.zeros((0, 2)), np.zeros(0, np.int64)
    return np.concatenate(points), np.asarray(owners)


def box_sizes(masks: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """Larger side of each keypoint's sprite box per frame (T, K); 0 where the sprite is not visible."""
    sizes = np.zeros((len(masks), len(owners)))
    for t in range(len(masks)):
        for k, s in enumerate(owners):
            ys, xs = np.nonzero(masks[t, s])
            if len(ys):
                sizes[t, k] = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    return sizes


def keypoint_task(feature_map: np.ndarray, clip: Clip, config: PropagationConfig) -> dict[str, float] | None:
    points, owners = keypoint_queries(clip)
    if not len(points):
        return None
    truth, visible = clip.track(np.concatenate([np.zeros((len(points), 1)), points], 1))
    pred = propagate_keypoints(feature_map, points, clip.size, config)
    scores = pck(pred, truth.transpose(1, 0, 2), visible.T, box_sizes(clip.masks, owners))
    return {f"keypoints_{k}": v for k, v in scores.items()}


def tracking_scores(tracker, clip: Clip, token_px: float) -> dict[str, float]:
    """TAP-Vid scores of ``tracker`` on a frame-0 grid of ``clip`` against the generator's truth ('first' queries, the
    clip's pixels), on all points and on the points that moved more than a token."""
    queries = query_grid(TRACK_GRID, *clip.size).astype(np.float32)
    truth, visible = clip.track(queries)
    score = score_tracker(tracker, LabelledVideo(clip.video, truth, ~visible, queries=queries), "first",
                          moved_distance=MOVED_TOKENS * token_px)
    return {"tracking_delta_avg": score.metrics["average_pts_within_thresh"],
            "tracking_AJ": score.metrics["average_jaccard"],
            "tracking_delta_avg_moved": score.moved_metrics["average_pts_within_thresh"]}


def pixel_patch_features(video: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Raw pixels of each token's patch as its feature (T, h, w, 3 * ph * pw), in [-1, 1]: the no-model reference."""
    num_frames, height, width = video.shape[:3]
    h, w = grid
    if height % h or width % w:
        raise UserError(f"pixel-patch features need a frame size divisible by the {h}x{w} grid, got {width}x{height}")
    ph, pw = height // h, width // w
    patches = video.reshape(num_frames, h, ph, w, pw, 3).transpose(0, 1, 3, 2, 4, 5)
    return (patches.reshape(num_frames, h, w, -1).astype(np.float32) / 127.5 - 1)


# ----- aggregation ---------------------------------------------------------------------------

def mean_records(records: list[dict | None]) -> dict[str, float]:
    """Mean of every metric over clips (clips where a task had nothing to score are left out)."""
    keys = sorted({k for r in records if r for k in r})
    out = {}
    for k in keys:
        values = np.array([r[k] for r in records if r and k in r], np.float64)
        values = values[~np.isnan(values)]
        out[k] = float(values.mean()) if len(values) else float("nan")
    return out


def _semantic(train: PooledSamples, test: PooledSamples) -> dict[str, float]:
    scores = probe_accuracy(train, test, {"shape": len(SHAPES), "texture": len(TEXTURES)})
    return {f"semantic_{k}": v for k, v in scores.items()}


def evaluate_grid(backbone, blocks: list[int], steps: list[int], eval_clips: list[Clip], train_clips: list[Clip],
                  options: TaskOptions, progress: bool = True) -> list[dict]:
    """One record per (block, step): the model, block, step, timestep and every requested task's scores."""
    from difftrack.tracker import DiffTracker

    tasks = check_tasks(options.tasks)
    if "semantic" in tasks and not train_clips:
        raise UserError("the semantic probe needs training videos; give --train-videos 1 or more")
    timesteps = backbone.timesteps(options.num_steps)
    token_px = eval_clips[0].size[1] / token_grid(backbone, eval_clips[0].size)[1]
    records = []
    for step in steps:
        spec = FeatureSpec(blocks=tuple(blocks), kinds=(options.kind,), step=step, num_steps=options.num_steps,
                           noise=options.noise, seed=options.seed, window=options.window)
        per_clip: dict[int, list[dict]] = {b: [] for b in blocks}
        test_pool: dict[int, list[PooledSamples]] = {b: [] for b in blocks}
        train_pool: dict[int, list[PooledSamples]] = {b: [] for b in blocks}
        desc = f"{backbone.name} step {step}"
        for clip in tqdm(eval_clips, desc=f"{desc}: held-out clips", disable=not progress):
            needs_features = any(t in tasks for t in ("masks", "keypoints", "semantic"))
            features = extract_features(backbone, clip.video, spec) if needs_features else None
            for b in blocks:
                scores: dict[str, float] = {}
                fmap = features[(options.kind, b)] if features else None
                if "masks" in tasks:
                    scores.update(mask_task(fmap, clip, options.mask_config) or {})
                if "keypoints" in tasks:
                    scores.update(keypoint_task(fmap, clip, options.keypoint_config) or {})
                if "tracking" in tasks:
                    # The image model sees every frame on its own anyway: one "window" over the whole clip.
                    window = options.window or (clip.num_frames if is_image_model(backbone) else None)
                    tracker = DiffTracker(backbone, layers=[b], steps=[step], num_steps=options.num_steps,
                                          noise=options.noise, seed=options.seed, window=window)
                    scores.update(tracking_scores(tracker, clip, token_px))
                if "semantic" in tasks:
                    test_pool[b].append(pool_sprites(fmap, clip.masks, clip.labels, clip.seed))
                per_clip[b].append(scores)
        if "semantic" in tasks:
            for clip in tqdm(train_clips, desc=f"{desc}: probe training clips", disable=not progress):
                features = extract_features(backbone, clip.video, spec)
                for b in blocks:
                    train_pool[b].append(pool_sprites(features[(options.kind, b)], clip.masks, clip.labels, clip.seed))
        for b in blocks:
            record = {"model": backbone.name, "block": b, "step": step, "timestep": float(timesteps[step]),
                      **mean_records(per_clip[b])}
            if "semantic" in tasks:
                record.update(_semantic(PooledSamples.concat(train_pool[b]), PooledSamples.concat(test_pool[b])))
            records.append(record)
    return records


def evaluate_references(eval_clips: list[Clip], train_clips: list[Clip], options: TaskOptions,
                        grid: tuple[int, int] = (16, 16)) -> list[dict]:
    """Scores that need no model: pixel patches as features (propagation, probe) and the zero-motion tracker."""
    from difftrack.baselines import zero_motion

    tasks = check_tasks(options.tasks)
    pixel_clips, still_clips, test_pool, train_pool = [], [], [], []
    for clip in eval_clips:
        fmap = pixel_patch_features(clip.video, grid)
        scores = {}
        if "masks" in tasks:
            scores.update(mask_task(fmap, clip, options.mask_config) or {})
        if "keypoints" in tasks:
            scores.update(keypoint_task(fmap, clip, options.keypoint_config) or {})
        if "semantic" in tasks:
            test_pool.append(pool_sprites(fmap, clip.masks, clip.labels, clip.seed))
        pixel_clips.append(scores)
        if "tracking" in tasks:
            still_clips.append(tracking_scores(zero_motion, clip, clip.size[1] / grid[1]))
    patch = f"{eval_clips[0].size[0] // grid[0]}x{eval_clips[0].size[1] // grid[1]}"
    pixels = {"model": f"pixels ({patch} patches)", **mean_records(pixel_clips)}
    if "semantic" in tasks:
        for clip in train_clips:
            train_pool.append(pool_sprites(pixel_patch_features(clip.video, grid), clip.masks, clip.labels, clip.seed))
        pixels.update(_semantic(PooledSamples.concat(train_pool), PooledSamples.concat(test_pool)))
    out = [pixels]
    if "tracking" in tasks:
        out.append({"model": "zero motion", **mean_records(still_clips)})
    return out
