import json

import numpy as np
import pytest
import torch

from difftrack.cli import main
from difftrack.errors import UserError
from difftrack.io import write_video
from difftrack.probe.features import FeatureSpec, extract_features, load_feature_npz
from difftrack.probe.pictures import kmeans, pca_rgb, screen_consistency, track_consistency
from difftrack.probe.propagation import (
    PropagationConfig,
    boundary_f,
    jaccard,
    label_map_to_tokens,
    mask_scores,
    pck,
    propagate_keypoints,
    propagate_labels,
    propagate_mask,
)
from difftrack.probe.semantic import LinearProbe, PooledSamples, check_disjoint, probe_accuracy, split_by_video
from difftrack.testing import tiny_backbone

STRIDE = 4  # pixels per token in the propagation tests


def shifted_scene(frames=6, grid=(12, 14), channels=64, shift=(1, 1), seed=0):
    """Features of a camera sliding over a random feature field by ``shift`` (rows, cols) tokens a frame."""
    rng = np.random.default_rng(seed)
    h, w = grid
    field = rng.normal(size=(h + frames * shift[0], w + frames * shift[1], channels)).astype(np.float32)
    return np.stack([field[t * shift[0]:t * shift[0] + h, t * shift[1]:t * shift[1] + w] for t in range(frames)])


def token_mask(grid, rows, cols):
    m = np.zeros(grid, np.int64)
    m[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return m


def test_a_known_shift_propagates_a_mask_exactly():
    grid, shift, frames = (12, 14), (1, 1), 5
    feats = shifted_scene(frames, grid, shift=shift)
    config = PropagationConfig(temperature=0.1, topk=15, radius=3, context=3)
    # The object sits on the field, so in view coordinates it moves by -shift a frame.
    # (more than the radius away from the bottom and right edges, where unseen content enters the view)
    first = token_mask(grid, (5, 8), (6, 10))
    size = (grid[0] * STRIDE, grid[1] * STRIDE)
    pixel_mask = np.kron(first, np.ones((STRIDE, STRIDE), np.int64))
    soft = propagate_labels(feats, label_map_to_tokens(first, 2, grid), config)
    pred = propagate_mask(feats, pixel_mask, size, config)
    for t in range(frames):
        want = token_mask(grid, (5 - t, 8 - t), (6 - t, 10 - t))
        # On the token grid the labels move exactly with the content, with (almost) all weight on the right tokens.
        assert np.array_equal(soft[t].argmax(0).numpy(), want), t
        assert torch.allclose(soft[t, 1], torch.from_numpy(want).float(), atol=0.02), t
        # In pixels, frame t's read-out is frame 0's (bilinear upsampling rounds the corners) moved by the shift.
        assert np.array_equal(pred[t], np.roll(pred[0], (-t * STRIDE, -t * STRIDE), axis=(0, 1))), t
    assert (pred[0] == pixel_mask).mean() > 0.99


def test_the_radius_limits_where_labels_can_come_from():
    grid = (12, 14)
    feats = shifted_scene(4, grid, shift=(0, 2))
    first = token_mask(grid, (4, 8), (6, 10))
    exact = PropagationConfig(radius=2, context=1)
    too_small = PropagationConfig(radius=1, context=1)  # the content moved 2 tokens: out of reach
    want = token_mask(grid, (4, 8), (4, 8))
    first_soft = label_map_to_tokens(first, 2, grid)
    assert np.array_equal(propagate_labels(feats, first_soft, exact)[1].argmax(0).numpy(), want)
    assert not np.array_equal(propagate_labels(feats, first_soft, too_small)[1].argmax(0).numpy(), want)


def test_keypoints_follow_a_known_shift_to_the_pixel():
    grid = (12, 14)
    feats = shifted_scene(5, grid, shift=(1, 0))
    size = (grid[0] * STRIDE, grid[1] * STRIDE)
    points = np.array([[6 * STRIDE + 2.0, 8 * STRIDE + 2.0], [9 * STRIDE + 2.0, 6 * STRIDE + 2.0]])
    pred = propagate_keypoints(feats, points, size, PropagationConfig(radius=2, context=2))
    for t in range(5):
        want = points - [0, t * STRIDE]
        assert np.abs(pred[t] - want).max() <= 0.5, (t, pred[t], want)


def test_bad_propagation_input_is_one_line_user_error():
    feats = shifted_scene(4, (6, 6))
    with pytest.raises(UserError, match="video is 28x24"):
        propagate_mask(feats, np.zeros((20, 20), np.int64), (24, 28))
    with pytest.raises(UserError, match="shorter than --context 3"):
        propagate_mask(feats, np.zeros((24, 24), np.int64), (24, 24), PropagationConfig(context=3))
    with pytest.raises(UserError, match="outside"):
        propagate_keypoints(feats, np.array([[30.0, 2.0]]), (24, 24), PropagationConfig(context=1))


def test_region_and_boundary_scores():
    a = np.zeros((32, 32), bool)
    a[8:20, 8:20] = True
    b = np.zeros_like(a)
    b[8:20, 14:26] = True
    assert jaccard(a, a) == 1.0 and boundary_f(a, a) == 1.0
    assert jaccard(a, b) == pytest.approx(72 / 216)
    assert jaccard(a, ~a) == 0.0 and boundary_f(a, np.zeros_like(a)) == 0.0
    assert jaccard(np.zeros_like(a), np.zeros_like(a)) == 1.0
    # a one-pixel shift is within the boundary tolerance (ceil(0.008 * diagonal) = 1 px)
    assert boundary_f(a, np.roll(a, 1, axis=1)) == 1.0 and boundary_f(a, b) < 0.6
    truth = np.stack([a, b])[:, None]  # (T=2, S=1, H, W)
    pred = np.stack([a, a]).astype(np.int64)
    scores = mask_scores(pred, truth, [1])  # frame 0 is not scored
    assert scores["J"] == pytest.approx(72 / 216) and scores["J&F"] == pytest.approx((scores["J"] + scores["F"]) / 2)


def test_pck_uses_the_box_size_and_skips_invisible_points():
    truth = np.zeros((3, 2, 2))
    pred = truth.copy()
    pred[1:, 0] = [3.0, 0.0]  # 3 px off
    pred[1:, 1] = [30.0, 0.0]  # far off, but invisible in frame 2
    visible = np.array([[True, True], [True, True], [True, False]])
    box = np.full((3, 2), 20.0)  # PCK@0.1 -> 2 px, @0.2 -> 4 px
    scores = pck(pred, truth, visible, box)
    assert scores["PCK@0.1"] == 0.0 and scores["PCK@0.2"] == pytest.approx(2 / 3)


# ----- semantic probe ------------------------------------------------------------------------

def blob_samples(videos, per_video=6, seed=0):
    """Two linearly separable classes; each video has one class (like one sprite across frames)."""
    rng = np.random.default_rng(seed)
    feats, labels, vids = [], [], []
    for v in videos:
        label = v % 2
        centre = np.where(np.arange(16) < 8, 1.5, -1.5) * (1 if label else -1)
        feats.append(centre + rng.normal(size=(per_video, 16)))
        labels += [label] * per_video
        vids += [v] * per_video
    n = len(labels)
    return PooledSamples(np.concatenate(feats).astype(np.float32), np.asarray(labels), np.zeros(n, np.int64),
                         np.asarray(vids), np.tile(np.arange(per_video), len(videos)))


def test_split_by_video_keeps_every_video_on_one_side_and_is_seeded():
    samples = blob_samples(range(20))
    train, test = split_by_video(samples.video, 0.25, seed=3)
    assert sorted(np.concatenate([train, test])) == list(range(len(samples)))
    assert not set(samples.video[train]) & set(samples.video[test])
    assert len(set(samples.video[test])) == 5
    again = split_by_video(samples.video, 0.25, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(test, split_by_video(samples.video, 0.25, seed=4)[1])
    with pytest.raises(UserError):
        split_by_video(np.zeros(5), 0.25)


def test_probe_trains_on_some_videos_and_scores_held_out_ones():
    samples = blob_samples(range(24))
    train, test = split_by_video(samples.video, 0.25, seed=0)
    scores = probe_accuracy(samples.subset(train), samples.subset(test), {"shape": 2})
    assert scores["shape_acc"] > 0.95
    assert scores["shape_majority"] < 0.8
    # Shuffled labels carry nothing a linear probe can transfer to new videos.
    shuffled = samples.subset(train)
    shuffled.shape = np.random.default_rng(0).permutation(shuffled.shape)
    assert probe_accuracy(shuffled, samples.subset(test), {"shape": 2})["shape_acc"] < 0.8
    with pytest.raises(UserError, match="in both the training and the test set"):
        check_disjoint(samples.subset(train), samples.subset(np.concatenate([test, train[:1]])))
    probe = LinearProbe(2).fit(samples.features, samples.shape)
    assert np.array_equal(probe.predict(samples.features), LinearProbe(2).fit(samples.features, samples.shape)
                          .predict(samples.features))


# ----- features ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedded_twins(tmp_path_factory):
    from difftrack.backbones.embedded import build_components, model_config, save_components

    root = tmp_path_factory.mktemp("twins")
    cfg = model_config(layers=3, heads=2, head_dim=16, size=32, frames=4, text_tokens=8, text_dim=32)
    save_components(build_components(cfg, seed=0), root / "video", frames_per_sample=4)
    save_components(build_components(cfg, seed=1), root / "image", frames_per_sample=1)
    return root


@pytest.mark.parametrize("kind", ["cogvideox-sincos", "cogvideox-rope", "cogvideox-i2v", "hunyuanvideo", "wan"])
def test_feature_shapes_per_backbone(kind):
    bb = tiny_backbone(kind)
    video = np.random.default_rng(0).integers(0, 255, (3, 32, 48, 3), dtype=np.uint8)
    spec = FeatureSpec(blocks=(0, bb.num_layers - 1), kinds=("query", "key", "feature", "block"), step=3, num_steps=5)
    fs = extract_features(bb, video, spec)
    heads, dim = bb.heads, bb.transformer.config.attention_head_dim
    assert fs.grid == (2, 3) and fs.stride_px == (16.0, 16.0)
    for block in (0, bb.num_layers - 1):
        for name in ("query", "key", "feature"):
            assert fs[(name, block)].shape == (3, 2, 3, heads * dim), (kind, name)
        assert fs[("block", block)].shape[:3] == (3, 2, 3)
        assert np.isfinite(fs[("block", block)]).all()
    # The first block's output is the second block's input: it changes with the block index.
    assert not np.allclose(fs[("block", 0)], fs[("block", bb.num_layers - 1)])


def test_image_model_features_never_mix_frames_and_video_model_features_do(embedded_twins):
    import difftrack

    video = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    edited = video.copy()
    edited[3] = 255 - edited[3]
    spec = FeatureSpec(blocks=(1,), kinds=("block", "key"), step=2, num_steps=10)
    for name, mixes in (("image", False), ("video", True)):
        bb = difftrack.create_backbone(str(embedded_twins / name))
        a, b = extract_features(bb, video, spec), extract_features(bb, edited, spec)
        assert a.meta["per_frame"] is (not mixes)
        assert a[("block", 1)].shape == (4, 8, 8, 32) and a[("key", 1)].shape == (4, 8, 8, 32)
        same_first_frames = np.allclose(a[("block", 1)][:3], b[("block", 1)][:3], atol=1e-5)
        assert same_first_frames is (not mixes), name
    # The same forward with a deeper block captured gives identical activations for the shallower one.
    deeper = extract_features(bb, video, FeatureSpec(blocks=(1, 2), kinds=("block",), step=2, num_steps=10))
    assert np.array_equal(deeper[("block", 1)], a[("block", 1)])


def test_bad_block_or_step_is_user_error():
    bb = tiny_backbone("cogvideox-rope")
    video = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(UserError, match="layer 2 is out of range"):
        extract_features(bb, video, FeatureSpec(blocks=(2,), num_steps=5, step=1))
    with pytest.raises(UserError, match="step 5 is out of range"):
        extract_features(bb, video, FeatureSpec(blocks=(0,), num_steps=5, step=5))
    with pytest.raises(UserError, match="unknown feature kind"):
        extract_features(bb, video, FeatureSpec(blocks=(0,), kinds=("values",), num_steps=5, step=1))


# ----- pictures ------------------------------------------------------------------------------

def test_kmeans_recovers_separated_clusters_and_pca_colours_are_stable():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 10
    truth = rng.integers(0, 4, 400)
    x = centres[truth] + rng.normal(size=(400, 8)) * 0.1
    ids = kmeans(x, 4, seed=0)
    # same partition up to renaming
    assert len({(a, b) for a, b in zip(truth, ids)}) == 4
    assert np.array_equal(ids, kmeans(x, 4, seed=0))
    fmap = x.reshape(4, 10, 10, 8)
    rgb = pca_rgb(fmap)
    assert rgb.shape == (4, 10, 10, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, pca_rgb(-fmap))  # the sign of a component does not change the picture


def test_cluster_consistency_tells_content_bound_from_screen_bound_features():
    from difftrack.data.synthetic import generate_clip

    clip = generate_clip(0, num_frames=6, control=True)
    h = w = 16
    # Content-bound ids: each wall cell of one token has its own id, wherever the camera shows it.
    ys, xs = np.mgrid[0:h, 0:w]
    content = np.stack([(np.floor(ys + 0.5 + clip.camera[t, 1] * h) * 7 + np.floor(xs + 0.5 + clip.camera[t, 0] * w) * 3)
                        for t in range(6)]).astype(np.int64) % 10
    screen = np.broadcast_to(content[:1], content.shape)
    assert track_consistency(content, clip) > track_consistency(screen, clip) + 0.2
    assert screen_consistency(screen) == 1.0 > screen_consistency(content)


# ----- command line --------------------------------------------------------------------------

def test_cli_features_writes_npz_with_geometry(embedded_twins, tmp_path):
    video = tmp_path / "clip.mp4"
    write_video(video, np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))
    out = tmp_path / "f.npz"
    code = main(["probe", "features", "--model", str(embedded_twins / "video"), "--video", str(video), "--block", "0",
                 "2", "--noise-step", "3", "--num-steps", "10", "--kinds", "query", "block", "--out", str(out)])
    assert code == 0
    fs = load_feature_npz(out)
    assert set(fs.maps) == {("query", 0), ("query", 2), ("block", 0), ("block", 2)}
    assert fs.grid == (8, 8) and fs.frame_size == (32, 32) and fs.stride_px == (4.0, 4.0)
    assert fs.meta["step"] == 3 and fs.meta["num_steps"] == 10


def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(embedded_twins, tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    write_video(video, np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))
    model = str(embedded_twins / "video")
    np.save(tmp_path / "small.npy", np.zeros((16, 16), np.int64))
    np.save(tmp_path / "ok.npy", np.pad(np.ones((8, 8), np.int64), 12))
    cases = [
        (["features", "--block", "3", "--out", str(tmp_path / "a.npz")], "layer 3 is out of range"),
        (["features", "--block", "0", "--noise-step", "50", "--out", str(tmp_path / "a.npz")], "step 50 is out of range"),
        (["propagate", "--masks", str(tmp_path / "small.npy"), "--out", str(tmp_path / "p")], "video is 32x32"),
        (["propagate", "--masks", str(tmp_path / "ok.npy"), "--context", "3", "--out", str(tmp_path / "p")],
         "shorter than --context 3"),
        (["propagate", "--masks", str(tmp_path / "ok.npy"), "--block", "7", "--context", "1", "--out", str(tmp_path / "p")],
         "layer 7 is out of range"),
    ]
    for extra, message in cases:
        sub = extra[0]
        code = main(["probe", sub, "--model", model, "--video", str(video), *extra[1:]])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error" in line.lower()]  # (model loading shows progress bars)
        assert code == 2 and len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], (extra, err)
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "ok.npy", "small.npy"]
    code = main(["probe", "compare", "--video-model", model, "--image-model", model, "--train-seed-start", "5",
                 "--eval-seed-start", "10", "--train-videos", "8", "--out", str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    assert code == 2 and "overlap" in err and not (tmp_path / "cmp").exists()


def test_cli_propagate_masks_and_keypoints_on_a_video(embedded_twins, tmp_path):
    video = tmp_path / "clip.mp4"
    write_video(video, np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))
    np.save(tmp_path / "mask.npy", np.pad(np.ones((8, 8), np.int64), 12))
    (tmp_path / "kp.json").write_text(json.dumps([[10.5, 12.5], {"x": 20.0, "y": 4.0}]))
    out = tmp_path / "prop"
    code = main(["probe", "propagate", "--model", str(embedded_twins / "image"), "--video", str(video), "--masks",
                 str(tmp_path / "mask.npy"), "--keypoints", str(tmp_path / "kp.json"), "--context", "1",
                 "--num-steps", "10", "--noise-step", "8", "--out", str(out)])
    assert code == 0
    with np.load(out.with_suffix(".npz")) as data:
        assert data["masks"].shape == (4, 32, 32) and set(np.unique(data["masks"])) <= {0, 1}
        assert data["keypoints"].shape == (4, 2, 2)
        assert np.allclose(data["keypoints"][0], [[10.5, 12.5], [20.0, 4.0]])
    assert out.with_suffix(".mp4").stat().st_size > 0
