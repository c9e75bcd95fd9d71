"""Temporal-consistency measures and quality guard on constructed videos."""

import cv2
import numpy as np
import pytest

from difftrack.evaluation import frame_difference, sharpness, temporal_metrics, track_acceleration, warp_error

SIZE, FRAMES = 64, 8


def texture(size=160, seed=0):
    """Smooth random RGB texture, uint8 (size, size, 3): trackable at every scale LK and Farneback use."""
    rng = np.random.default_rng(seed)
    noise = rng.random((size, size, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).astype(np.uint8)


def panned(offsets):
    """Crops of one texture at the given (x, y) integer offsets: a camera pan."""
    canvas = texture()
    return np.stack([canvas[y:y + SIZE, x:x + SIZE] for x, y in offsets])


def test_static_video_has_no_warp_error_motion_or_acceleration():
    video = panned([(40, 40)] * FRAMES)
    w = warp_error(video)
    assert w["warp_error"] < 1e-3 and w["flow_magnitude"] < 1e-2  # Farneback leaves sub-grey-level noise
    a = track_acceleration(video)
    assert a["acceleration"] < 1e-3 and a["tracked_fraction"] == 1.0
    assert frame_difference(video) == 0.0


def test_constant_velocity_translation():
    video = panned([(20 + 2 * t, 30 + t) for t in range(FRAMES)])
    a = track_acceleration(video)
    assert a["tracked_fraction"] > 0.5
    assert a["acceleration"] < 0.1
    w = warp_error(video)
    assert 1.5 < w["flow_magnitude"] < 2.7  # |(2, 1)| = 2.24 px a frame
    # Warping explains the motion: the error is far below that of unrelated consecutive frames.
    shuffled = np.stack([texture(seed=s)[:SIZE, :SIZE] for s in range(FRAMES)])
    assert w["warp_error"] < 0.2 * warp_error(shuffled)["warp_error"]
    assert w["warp_error"] < 0.2 * frame_difference(video)


def test_jittery_motion_has_higher_acceleration():
    steady = panned([(20 + 2 * t, 30) for t in range(FRAMES)])
    jitter = panned([(20 + 2 * t + (3 if t % 2 else 0), 30) for t in range(FRAMES)])
    assert track_acceleration(jitter)["acceleration"] > 2.0 > 10 * track_acceleration(steady)["acceleration"]


def test_blur_lowers_sharpness_and_guard_reports_it():
    video = panned([(20 + t, 30) for t in range(FRAMES)])
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in video])
    assert sharpness(blurred) < 0.5 * sharpness(video)
    m = temporal_metrics(blurred, reference=video)
    assert m["sharpness_ratio_to_reference"] < 0.5
    assert m["difference_to_reference"] == pytest.approx(frame_difference(blurred, video))
    assert m["difference_to_reference"] > 0
    assert temporal_metrics(video, reference=video)["difference_to_reference"] == 0.0


def test_rejects_wrong_layout():
    with pytest.raises(ValueError, match="uint8 RGB"):
        sharpness(np.zeros((4, 8, 8), dtype=np.uint8))
