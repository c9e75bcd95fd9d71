"""Per-frame linear semantic probe: pooled features of a sprite -> its shape or texture class.

One sample is (video, frame, sprite): the block's features averaged over the tokens the sprite's
visible mask covers (weighted by the covered fraction of each token). A multinomial logistic
regression (standardised inputs, L2 penalty, full-batch L-BFGS in torch) is trained on samples of
some generator videos and tested on samples of other videos: the split is by video seed, so no
frame of a test video (which shares the sprite with the video's other frames) is ever trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from difftrack.errors import UserError

MIN_TOKENS = 1.0  # a sprite must cover at least this many tokens' worth of pixels in a frame to be a sample


@dataclass
class PooledSamples:
    features: np.ndarray  # (n, C)
    shape: np.ndarray  # (n,) shape class id
    texture: np.ndarray  # (n,) texture class id
    video: np.ndarray  # (n,) video (generator) seed
    frame: np.ndarray  # (n,)

    def __len__(self) -> int:
        return len(self.features)

    @staticmethod
    def concat(parts: list["PooledSamples"]) -> "PooledSamples":
        return PooledSamples(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                               ("features", "shape", "texture", "video", "frame")))

    def subset(self, index: np.ndarray) -> "PooledSamples":
        return PooledSamples(self.features[index], self.shape[index], self.texture[index], self.video[index],
                             self.frame[index])


def pool_sprites(feature_map: np.ndarray, masks: np.ndarray, labels: list[tuple[int, int]], video_seed: int
                 ) -> PooledSamples:
    """Features (T, h, w, C) and visible sprite masks (T, S, H, W) -> one pooled sample per visible sprite and frame."""
    feats = torch.as_tensor(feature_map).float()
    num_frames, h, w, channels = feats.shape
    cover = F.interpolate(torch.from_numpy(masks).float(), size=(h, w), mode="area")  # (T, S, h, w) fraction
    pixels_per_token = masks.shape[2] * masks.shape[3] / (h * w)
    rows = []
    for t in range(num_frames):
        for s, (shape_id, texture_id) in enumerate(labels):
            weight = cover[t, s]
            if weight.sum() < MIN_TOKENS or masks[t, s].sum() < MIN_TOKENS * pixels_per_token:
                continue
            pooled = (feats[t] * weight[..., None]).sum((0, 1)) / weight.sum()
            rows.append((pooled.numpy(), shape_id, texture_id, video_seed, t))
    if not rows:
        return PooledSamples(np.zeros((0, channels), np.float32), *(np.zeros(0, np.int64) for _ in range(4)))
    feats_out, shapes, textures, videos, frames = zip(*rows)
    return PooledSamples(np.stack(feats_out).astype(np.float32), np.asarray(shapes), np.asarray(textures),
                         np.asarray(videos), np.asarray(frames))


def split_by_video(video_seeds: np.ndarray, test_fraction: float = 0.25, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of samples, all samples of one video on the same side; same seed, same split."""
    video_seeds = np.asarray(video_seeds)
    videos = np.unique(video_seeds)
    if not 0 < test_fraction < 1:
        raise UserError(f"the test fraction must lie strictly between 0 and 1, got {test_fraction:g}")
    if len(videos) < 2:
        raise UserError(f"a train/test split by video needs at least 2 videos, got {len(videos)}")
    n_test = min(len(videos) - 1, max(1, int(round(test_fraction * len(videos)))))
    test_videos = np.random.default_rng(seed).permutation(videos)[:n_test]
    is_test = np.isin(video_seeds, test_videos)
    return np.nonzero(~is_test)[0], np.nonzero(is_test)[0]


def check_disjoint(train: PooledSamples, test: PooledSamples) -> None:
    shared = np.intersect1d(train.video, test.video)
    if len(shared):
        raise UserError(f"videos {', '.join(map(str, shared[:5]))} are in both the training and the test set; "
                        f"choose disjoint --train-seeds and --test-seeds")


class LinearProbe:
    """Multinomial logistic regression on standardised features."""

    def __init__(self, num_classes: int, weight_decay: float = 1e-2, max_iter: int = 200):
        self.num_classes = num_classes
        self.weight_decay = weight_decay
        self.max_iter = max_iter

    def fit(self, x: np.ndarray, y: np.ndarray) -> "LinearProbe":
        if len(x) == 0:
            raise UserError("the semantic probe has no training samples: no sprite is visible in the training videos")
        x = torch.as_tensor(x, dtype=torch.float64)
        self.mean = x.mean(0)
        self.std = x.std(0, unbiased=False).clamp_min(1e-6)
        z = (x - self.mean) / self.std
        target = torch.as_tensor(y, dtype=torch.long)
        self.weight = torch.zeros(z.shape[1], self.num_classes, dtype=torch.float64, requires_grad=True)
        self.bias = torch.zeros(self.num_classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([self.weight, self.bias], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(z @ self.weight + self.bias, target) + self.weight_decay * self.weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return self

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (torch.as_tensor(x, dtype=torch.float64) - self.mean) / self.std
        return (z @ self.weight + self.bias).argmax(1).numpy()


def probe_accuracy(train: PooledSamples, test: PooledSamples, num_classes: dict[str, int]) -> dict[str, float]:
    """Test accuracy of a probe per target ("shape", "texture"), and that of always answering the training
    set's most frequent class (the chance level a probe has to beat)."""
    check_disjoint(train, test)
    out = {}
    for target, classes in num_classes.items():
        y_train, y_test = getattr(train, target), getattr(test, target)
        probe = LinearProbe(classes).fit(train.features, y_train)
        out[f"{target}_acc"] = float((probe.predict(test.features) == y_test).mean()) if len(test) else float("nan")
        majority = np.bincount(y_train, minlength=classes).argmax()
        out[f"{target}_majority"] = float((y_test == majority).mean()) if len(test) else float("nan")
    return out
