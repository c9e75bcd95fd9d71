import numpy as np
import pytest

from difftrack.data.synthetic import SHAPES, TEXTURES, VOCABULARY, generate_clip, to_tapvid


def test_same_seed_same_clip_and_different_seeds_differ():
    a, b, c = generate_clip(3, num_frames=4), generate_clip(3, num_frames=4), generate_clip(4, num_frames=4)
    assert np.array_equal(a.video, b.video) and a.caption == b.caption
    assert not np.array_equal(a.video, c.video)
    assert a.video.shape == (4, 64, 64, 3) and a.video.dtype == np.uint8


def test_scene_does_not_depend_on_resolution():
    small, large = generate_clip(11, num_frames=3), generate_clip(11, num_frames=3, height=256, width=256)
    assert small.caption == large.caption and small.labels == large.labels
    queries = np.array([[0, 20.5, 30.5], [1, 50.5, 10.5]])
    t_small, v_small = small.track(queries)
    t_large, v_large = large.track(queries * [1, 4, 4])
    np.testing.assert_allclose(t_small * 4, t_large, atol=1e-3)
    assert np.array_equal(v_small, v_large)
    # The 256x256 rendering downsampled looks like the 64x64 one.
    import cv2

    down = cv2.resize(large.video[0], (64, 64), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(down - small.video[0]).mean() < 12


def test_captions_and_labels_use_the_vocabulary():
    for seed in range(8):
        clip = generate_clip(seed, num_frames=3)
        assert set(clip.caption.split()) <= set(VOCABULARY)
        assert len(clip.labels) == len(clip.sprites) == clip.masks.shape[1]
        for shape_id, texture_id in clip.labels:
            assert 0 <= shape_id < len(SHAPES) and 0 <= texture_id < len(TEXTURES)
        biggest = max(clip.sprites, key=lambda s: s.radius[0])
        assert f"{biggest.texture} {biggest.shape}" in clip.caption


def test_control_clip_is_a_pan_over_uniform_brick():
    clip = generate_clip(5, num_frames=6, control=True)
    assert clip.caption == "the camera pans over a uniform brick wall"
    assert clip.sprites == [] and clip.masks.shape == (6, 0, 64, 64)
    assert np.abs(clip.camera[-1] - clip.camera[0]).max() > 0  # the camera moves


def _colour_at(frame, xy):
    import cv2

    x, y = np.float32([[xy[0] - 0.5]]), np.float32([[xy[1] - 0.5]])
    return cv2.remap(frame.astype(np.float32), x, y, cv2.INTER_LINEAR)[0, 0]


def test_wall_points_keep_their_colour_along_the_track():
    clip = generate_clip(7, num_frames=6, control=True, height=128, width=128)
    rng = np.random.default_rng(0)
    queries = np.stack([np.zeros(30), rng.uniform(8, 120, 30), rng.uniform(8, 120, 30)], -1)
    tracks, visible = clip.track(queries)
    errors = [np.abs(_colour_at(clip.video[t], tracks[n, t]) - _colour_at(clip.video[0], queries[n, 1:])).mean()
              for n in range(30) for t in range(6)
              if visible[n, t] and 2 < tracks[n, t, 0] < 126 and 2 < tracks[n, t, 1] < 126]
    assert len(errors) > 40
    assert np.median(errors) < 6


def test_visibility_agrees_with_the_instance_masks():
    agree, occluded_on_other, total, occluded = 0, 0, 0, 0
    for seed in range(6):
        clip = generate_clip(seed, num_frames=5)
        ys, xs = np.mgrid[0:64:3, 0:64:3]
        queries = np.stack([np.zeros(xs.size), xs.ravel() + 0.5, ys.ravel() + 0.5], -1)
        owner = np.full(xs.size, -1)
        for i in range(clip.masks.shape[1]):
            owner[clip.masks[0, i][ys.ravel(), xs.ravel()]] = i
        tracks, visible = clip.track(queries)
        assert visible[:, 0].all()
        for n in range(len(queries)):
            for t in range(5):
                px, py = np.floor(tracks[n, t]).astype(int)
                if not (0 <= px < 64 and 0 <= py < 64):
                    assert not visible[n, t]  # out of frame is never visible
                    continue
                on = [i for i in range(clip.masks.shape[1]) if clip.masks[t, i, py, px]]
                if visible[n, t]:
                    # a visible point lies on its own layer's visible mask (the wall: on no mask)
                    total += 1
                    agree += on == ([owner[n]] if owner[n] >= 0 else [])
                else:
                    occluded += 1
                    occluded_on_other += bool(on) and on != [owner[n]]
    # Masks are evaluated at pixel centres, tracks anywhere in the pixel: only edge pixels may disagree.
    assert total > 1000 and agree / total > 0.97
    assert occluded > 20 and occluded_on_other / occluded > 0.9


def test_motion_makes_staying_put_usually_wrong():
    moved, total = 0, 0
    for seed in range(10):
        clip = generate_clip(seed, num_frames=8)
        ys, xs = np.mgrid[2:64:8, 2:64:8] + 0.5
        queries = np.stack([np.zeros(xs.size), xs.ravel(), ys.ravel()], -1)
        tracks, visible = clip.track(queries)
        dist = np.abs(tracks[:, 1:] - queries[:, None, 1:]).max(-1) / 4  # in 4-px tokens
        moved += int(((dist > 1) & visible[:, 1:]).sum())
        total += int(visible[:, 1:].sum())
    assert moved / total > 0.5


@pytest.mark.parametrize("grid", [False, True])
def test_to_tapvid_format(grid):
    clip = generate_clip(2, num_frames=5, height=48, width=80)
    data = to_tapvid(clip, 16, seed=1, grid=grid)
    assert data["video"].shape == (5, 48, 80, 3) and data["video"].dtype == np.uint8
    assert data["points"].shape == (16, 5, 2) and data["points"].dtype == np.float32
    assert data["occluded"].shape == (16, 5) and data["occluded"].dtype == bool
    assert (~data["occluded"]).any(axis=1).all()  # each point is visible at its query frame
    vis = data["points"][~data["occluded"]]
    assert (vis >= 0).all() and (vis <= 1).all()
    again = to_tapvid(clip, 16, seed=1, grid=grid)
    assert np.array_equal(again["points"], data["points"])
    if grid:
        assert not data["occluded"][:, 0].any()

