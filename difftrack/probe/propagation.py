"""Training-free label propagation by feature similarity (the DAVIS / JHMDB protocol of CRW and DIFT).

Frame 0's labels (instance masks, or one Gaussian heat map per keypoint) are given. For every later
frame t, each token compares its L2-normalised feature with the tokens of a context: frame 0 (with
its given labels) and the ``context`` frames before t (with their predicted soft labels). Only
context tokens within ``radius`` tokens of the token's own position count; of those, the ``topk``
most similar are kept, their cosine similarities divided by ``temperature`` are softmaxed, and the
token's labels are the weighted mean of theirs. Labels live on the token grid; masks and keypoints
are read off the bilinearly upsampled label maps.

The published protocol's settings are temperature 0.1 and top-k 15, with radius 10 / context 28 frames for DAVIS
masks and radius 5 / context 14 frames for JHMDB keypoints. Those were set for feature grids of
about 60 tokens (480p at stride 8) and 40 tokens (320 px at stride 8) on the short side, and for
videos of about 70 (DAVIS) and 34 (JHMDB) frames. The embedded models have a 16 x 16 grid and
8-frame clips, so the radius is scaled by grid size (10 * 16 / 60 ~ 3, 5 * 16 / 40 = 2 tokens) and
the context by clip length (28 / 70 and 14 / 34 are both 0.4 of a video: 3 of 8 frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from difftrack.errors import UserError


@dataclass(frozen=True)
class PropagationConfig:
    temperature: float = 0.1
    topk: int = 15
    radius: float = 3.0  # tokens, Euclidean distance between token centres
    context: int = 3  # previous frames besides frame 0


MASK_DEFAULTS = PropagationConfig(temperature=0.1, topk=15, radius=3.0, context=3)
KEYPOINT_DEFAULTS = PropagationConfig(temperature=0.1, topk=15, radius=2.0, context=3)
KEYPOINT_SIGMA = 0.5  # tokens: the width of a keypoint's Gaussian label map on the token grid


def check_config(config: PropagationConfig, num_frames: int) -> None:
    if config.temperature <= 0:
        raise UserError(f"--temperature must be positive, got {config.temperature:g}")
    if config.topk < 1:
        raise UserError(f"--topk must be at least 1, got {config.topk}")
    if config.radius < 0:
        raise UserError(f"--radius must be at least 0 tokens, got {config.radius:g}")
    if config.context < 0:
        raise UserError(f"--context must be at least 0 frames, got {config.context}")
    if num_frames < 2:
        raise UserError(f"label propagation needs at least 2 frames, the video has {num_frames}")
    if config.context > num_frames - 2:
        raise UserError(f"the video has {num_frames} frames, shorter than --context {config.context} asks for "
                        f"(frame 0, {config.context} previous frames and the target); use --context "
                        f"{num_frames - 2} or less, or a longer video")


@torch.no_grad()
def propagate_labels(features: np.ndarray | torch.Tensor, first_labels: np.ndarray | torch.Tensor,
                     config: PropagationConfig) -> torch.Tensor:
    """Features (T, h, w, C), frame-0 labels (K, h, w) -> soft labels of every frame (T, K, h, w)."""
    feats = torch.as_tensor(features).float()
    num_frames, h, w, channels = feats.shape
    first = torch.as_tensor(first_labels).float()
    if first.shape[1:] != (h, w):
        raise UserError(f"frame-0 labels are on a {first.shape[1]}x{first.shape[2]} grid but the features on "
                        f"{h}x{w}; give labels at the video's own size")
    check_config(config, num_frames)
    tokens = h * w
    feats = F.normalize(feats.reshape(num_frames, tokens, channels), dim=-1)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack([rows.reshape(-1), cols.reshape(-1)], -1).float()
    near = torch.cdist(centres, centres) <= config.radius + 1e-6  # (P, P)

    labels = [first.reshape(len(first), tokens).T]  # each (P, K)
    for t in range(1, num_frames):
        context = [0] + list(range(max(1, t - config.context), t))
        similarity = torch.einsum("pc,nqc->pnq", feats[t], feats[context]) / config.temperature
        similarity = similarity.masked_fill(~near[:, None, :], float("-inf")).reshape(tokens, -1)
        top = similarity.topk(min(config.topk, similarity.shape[1]), dim=1)
        weights = torch.softmax(top.values, dim=1)  # -inf (outside the radius) gets weight 0
        context_labels = torch.cat([labels[f] for f in context])  # (n * P, K)
        labels.append((weights[..., None] * context_labels[top.indices]).sum(1))
    return torch.stack(labels).transpose(1, 2).reshape(num_frames, -1, h, w)


# ----- masks ---------------------------------------------------------------------------------

def check_label_map(label_map: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise UserError(f"the first-frame mask must be one label image (H, W), got an array of shape {label_map.shape}")
    if label_map.shape != tuple(frame_size):
        raise UserError(f"the first-frame mask is {label_map.shape[1]}x{label_map.shape[0]} but the video is "
                        f"{frame_size[1]}x{frame_size[0]}; give a mask at the video's own size")
    if not np.issubdtype(label_map.dtype, np.integer) and label_map.dtype != bool:
        raise UserError(f"the first-frame mask must hold integer instance ids (0 = background), got {label_map.dtype}")
    if label_map.min() < 0:
        raise UserError("the first-frame mask holds negative ids; use 0 for background and 1..K for instances")
    return label_map.astype(np.int64)


def label_map_to_tokens(label_map: np.ndarray, num_labels: int, grid: tuple[int, int]) -> torch.Tensor:
    """Integer label image (H, W) -> the fraction of each token's pixels carrying each label (K, h, w)."""
    one_hot = F.one_hot(torch.from_numpy(label_map), num_labels).permute(2, 0, 1).float()
    return F.interpolate(one_hot[None], size=grid, mode="area")[0]


def tokens_to_label_maps(soft: torch.Tensor, frame_size: tuple[int, int]) -> np.ndarray:
    """Soft labels (T, K, h, w) -> integer label images (T, H, W) by bilinear upsampling and argmax."""
    up = F.interpolate(soft, size=frame_size, mode="bilinear", align_corners=False)
    return up.argmax(1).numpy().astype(np.int64)


def propagate_mask(features: np.ndarray, first_label_map: np.ndarray, frame_size: tuple[int, int],
                   config: PropagationConfig = MASK_DEFAULTS) -> np.ndarray:
    """Propagate frame 0's instance ids (H, W; 0 = background) with features (T, h, w, C) -> ids (T, H, W)."""
    label_map = check_label_map(first_label_map, frame_size)
    check_config(config, features.shape[0])
    first = label_map_to_tokens(label_map, int(label_map.max()) + 1, tuple(features.shape[1:3]))
    return tokens_to_label_maps(propagate_labels(features, first, config), tuple(frame_size))


# ----- keypoints -----------------------------------------------------------------------------

def keypoint_maps(points_px: np.ndarray, frame_size: tuple[int, int], grid: tuple[int, int],
                  sigma: float = KEYPOINT_SIGMA) -> torch.Tensor:
    """Gaussian label maps (K, h, w) centred at pixel points (K, 2) as (x, y)."""
    h, w = grid
    sy, sx = frame_size[0] / h, frame_size[1] / w
    pts = torch.as_tensor(np.asarray(points_px, np.float64) / [sx, sy]).float()  # token units, centres at j + 0.5
    rows, cols = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    d2 = (cols[None] - pts[:, 0, None, None]) ** 2 + (rows[None] - pts[:, 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma * sigma))


def check_keypoints(points_px: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    points = np.asarray(points_px, np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or not len(points):
        raise UserError(f"keypoints must be a non-empty list of (x, y) pixels, got shape {points.shape}")
    h, w = frame_size
    bad = ~((points[:, 0] >= 0) & (points[:, 0] <= w) & (points[:, 1] >= 0) & (points[:, 1] <= h))
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise UserError(f"keypoint {i} at (x={points[i, 0]:g}, y={points[i, 1]:g}) lies outside the {w}x{h} frame")
    return points


def propagate_keypoints(features: np.ndarray, points_px: np.ndarray, frame_size: tuple[int, int],
                        config: PropagationConfig = KEYPOINT_DEFAULTS) -> np.ndarray:
    """Propagate frame-0 keypoints (K, 2) pixel (x, y) -> positions (T, K, 2): each keypoint's heat map is
    upsampled to pixels and its peak pixel's centre is the prediction."""
    points = check_keypoints(points_px, frame_size)
    check_config(config, features.shape[0])
    soft = propagate_labels(features, keypoint_maps(points, frame_size, tuple(features.shape[1:3])), config)
    up = F.interpolate(soft, size=tuple(frame_size), mode="bilinear", align_corners=False)
    flat = up.flatten(2).argmax(-1).numpy()  # (T, K)
    width = frame_size[1]
    out = np.stack([flat % width + 0.5, flat // width + 0.5], -1).astype(np.float32)
    out[0] = points
    return out


# ----- scores --------------------------------------------------------------------------------

def jaccard(pred: np.ndarray, truth: np.ndarray) -> float:
    """Region similarity J (IoU); 1 when both masks are empty, as DAVIS scores it."""
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask whose right, lower or lower-right neighbour differs (DAVIS's seg2bmap, same size)."""
    m = mask.astype(bool)
    east = np.zeros_like(m)
    south = np.zeros_like(m)
    southeast = np.zeros_like(m)
    east[:, :-1] = m[:, 1:]
    south[:-1, :] = m[1:, :]
    southeast[:-1, :-1] = m[1:, 1:]
    return (m ^ east) | (m ^ south) | (m ^ southeast)


def boundary_f(pred: np.ndarray, truth: np.ndarray, bound_th: float = 0.008) -> float:
    """Contour accuracy F (DAVIS): boundary precision/recall with a tolerance of bound_th x image diagonal."""
    import cv2

    radius = int(np.ceil(bound_th * np.hypot(*truth.shape)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    pb, tb = _boundary(pred), _boundary(truth)
    if not pb.any() and not tb.any():
        return 1.0
    if not pb.any() or not tb.any():
        return 0.0
    pd = cv2.dilate(pb.astype(np.uint8), disk).astype(bool)
    td = cv2.dilate(tb.astype(np.uint8), disk).astype(bool)
    precision = (pb & td).sum() / pb.sum()
    recall = (tb & pd).sum() / tb.sum()
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def mask_scores(pred_ids: np.ndarray, truth_masks: np.ndarray, object_ids: list[int]) -> dict[str, float]:
    """J, F and J&F of predicted ids (T, H, W) against true masks (T, S, H, W) for objects given as
    1-based ids; frames 1.. are scored (frame 0 is the input), averaged over frames, then objects."""
    js, fs = [], []
    for obj in object_ids:
        js.append(np.mean([jaccard(pred_ids[t] == obj, truth_masks[t, obj - 1]) for t in range(1, len(pred_ids))]))
        fs.append(np.mean([boundary_f(pred_ids[t] == obj, truth_masks[t, obj - 1]) for t in range(1, len(pred_ids))]))
    j, f = float(np.mean(js)), float(np.mean(fs))
    return {"J": j, "F": f, "J&F": (j + f) / 2}


def pck(pred: np.ndarray, truth: np.ndarray, visible: np.ndarray, box_size: np.ndarray,
        alphas=(0.1, 0.2)) -> dict[str, float]:
    """PCK@alpha: a visible keypoint is correct when within alpha x max(box height, width) of the truth.

    pred / truth (T, K, 2) pixels, visible (T, K) bool, box_size (T, K) the object box's larger side;
    frame 0 (the input) is not scored."""
    dist = np.linalg.norm(pred[1:] - truth[1:], axis=-1)
    vis = visible[1:] & (box_size[1:] > 0)
    if not vis.any():
        return {f"PCK@{a:g}": float("nan") for a in alphas}
    return {f"PCK@{a:g}": float((dist[vis] < a * box_size[1:][vis]).mean()) for a in alphas}
