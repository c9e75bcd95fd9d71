"""Ground truth for the analysis: pseudo ground truth from a point tracker, or exact generator truth.

Every labeller has the tracker signature of :mod:`difftrack.baselines`:

    labeller(video uint8 (T, H, W, 3), queries float32 (N, 3) as (t, x, y) pixels)
        -> (tracks float32 (T, N, 2) pixel (x, y), visible bool (T, N))

- ``lk`` (default, offline): OpenCV pyramidal Lucas-Kanade with a forward-backward check
  (:class:`difftrack.baselines.LucasKanade`).
- ``cotracker``: CoTracker3 (offline) through ``torch.hub``, only when its code and weights are
  already in the local torch hub cache (this tool never downloads).
- exact: :class:`ExactLabeller` wraps a clip of difftrack's own procedural generator, whose tracks
  and visibility are analytic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from difftrack.baselines import LucasKanade
from difftrack.errors import UserError

LABELLERS = ("lk", "cotracker")
COTRACKER_REPO_DIR = "facebookresearch_co-tracker_main"
COTRACKER_ENTRY = "cotracker3_offline"
COTRACKER_WEIGHTS = "scaled_offline.pth"


class CoTrackerLabeller:
    """CoTracker3 offline from the local torch hub cache; one line of error when it is not there."""

    def __init__(self, device: str = "cpu"):
        hub = Path(torch.hub.get_dir())
        repo = hub / COTRACKER_REPO_DIR
        weights = hub / "checkpoints" / COTRACKER_WEIGHTS
        if not (repo / "hubconf.py").is_file() or not weights.is_file():
            raise UserError(f"CoTracker is not in the local torch hub cache ({repo} and {weights}); fetch it on a "
                            f"connected machine with torch.hub.load('facebookresearch/co-tracker', "
                            f"'{COTRACKER_ENTRY}') or use --labeller lk")
        self.model = torch.hub.load(str(repo), COTRACKER_ENTRY, source="local").to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, video: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = torch.from_numpy(np.asarray(video)).permute(0, 3, 1, 2)[None].float().to(self.device)
        q = torch.as_tensor(np.asarray(queries, dtype=np.float32)).clone()
        q[:, 1:] -= 0.5  # CoTracker puts pixel centres at integers, difftrack at i + 0.5
        tracks, visible = self.model(frames, queries=q[None].to(self.device))
        return (tracks[0].cpu().numpy() + 0.5).astype(np.float32), visible[0].cpu().numpy().astype(bool)


class ExactLabeller:
    """Exact tracks and visibility of a :class:`difftrack.data.synthetic.Clip` (rendered at the video's size)."""

    def __init__(self, clip):
        self.clip = clip

    def __call__(self, video: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if tuple(video.shape[:3]) != (self.clip.num_frames, *self.clip.size):
            raise ValueError(f"video {video.shape} is not the clip's {self.clip.video.shape}")
        tracks, visible = self.clip.track(queries)
        return tracks.transpose(1, 0, 2).astype(np.float32), visible.T.copy()


def make_labeller(name: str):
    if name == "lk":
        return LucasKanade()
    if name == "cotracker":
        return CoTrackerLabeller()
    raise UserError(f"unknown labeller {name!r}; choose one of {', '.join(LABELLERS)}")
