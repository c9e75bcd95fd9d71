"""The photo clip renderer: ground truth exact against the rendering, determinism, the frozen held-out sets.

Every test renders with device="cpu": the same code runs on a GPU (one batched grid_sample from a bank of tensors),
only the device differs. Stand-in photographs are generated here; only the test of the committed manifest needs the
real held-out photographs (fetched and cached by difftrack.data.photos) and is skipped without them.
"""

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from difftrack.data import photo_clips
from difftrack.data.photo_clips import PhotoBank, draw_scene, layer_map, render, render_video, sample_queries
from difftrack.data.photos import default_cache_dir
from difftrack.data.tapvid import TapVidReader
from difftrack.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# The user's photo cache, read before the session's fixtures point DIFFTRACK_CACHE at a temporary folder.
PHOTO_CACHE = default_cache_dir()


def stand_in_photos(count=3, size=32, seed=0):
    """Textured colour photographs (and one grey one, which the renderer tints) of a few aspect ratios."""
    rng = np.random.default_rng(seed)
    photos = []
    for k in range(count):
        h, w = 2 * size + 8 * k, 3 * size - 4 * k
        low = rng.random((h // 4, w // 4, 3))
        image = np.kron(low, np.ones((4, 4, 1)))[:h, :w]
        image = (255 * (0.6 * image + 0.4 * rng.random((h, w, 3)))).astype(np.uint8)
        photos.append(image if k else np.repeat(image[..., :1], 3, -1))
    return photos


def _dot(shape, centre, sigma=2.0, channel=0):
    """A photograph, dark but not grey, with one bright Gaussian dot at ``centre`` (x, y) in texels."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    image = np.zeros(shape + (3,), np.uint8)
    image[..., 1] = 1
    image[..., channel] = np.round(255 * np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2)))
    return image


def _centroids(frames):
    """(T, 2) intensity centroid (x, y) of each (T, H, W) frame in pixel coordinates (centres at i + 0.5), and the
    (T,) total intensity."""
    frames = frames.astype(np.float64)
    h, w = frames.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    mass = frames.sum((1, 2))
    safe = np.maximum(mass, 1e-9)
    return np.stack([(frames * xx).sum((1, 2)) / safe, (frames * yy).sum((1, 2)) / safe], -1), mass


def _first_scene(layout, frames, wanted):
    """The scene of the first seed below 100 that has what ``wanted`` asks for."""
    return next(scene for scene in (draw_scene(seed, layout, frames) for seed in range(100)) if wanted(scene))


def _to_texel(affine, point):
    return affine[:, :2] @ point + affine[:, 2]


def test_a_bright_dot_on_the_wall_lands_where_its_track_says_and_leaves_with_it():
    size, frames = 64, 48
    shape = (2 * size, 3 * size)
    blank = _dot(shape, (-100, -100))
    layout = PhotoBank([blank, blank], size)
    # A clip whose camera pans, zooms and rolls, without sprites; the dot sits under pixel (30.5, 33.5) of frame 0.
    scene = _first_scene(layout, frames, lambda scene: scene.photo[0] == 0 and np.ptp(
        np.linalg.det(scene.screen_to_layer[:, 0, :, :2]) ** 0.5) > 0.05)
    scene = dataclasses.replace(scene, present=np.array([True, False, False]))
    query = np.array([[0, 30.5, 33.5]])
    texel = _to_texel(scene.layer_to_texel[0], _to_texel(scene.screen_to_layer[0, 0], query[0, 1:] / size))
    bank = PhotoBank([_dot(shape, texel), blank], size)
    video = render([scene], bank)[0, :, 0].numpy()
    tracks, visible = scene.track(query)
    centre, mass = _centroids(video)
    inside = ((tracks[0] > 8) & (tracks[0] < size - 8)).all(-1)
    outside = ((tracks[0] < -8) | (tracks[0] > size + 8)).any(-1)
    assert inside.sum() > 5 and outside.sum() > 5  # the camera carries the dot out of the frame and back
    np.testing.assert_allclose(centre[inside], tracks[0][inside], atol=0.06)
    assert (mass[outside] == 0).all() and not visible[0][outside].any() and visible[0][inside].all()


def test_a_bright_dot_on_a_sprite_follows_the_sprite():
    size, frames = 64, 24
    shape = (2 * size, 2 * size)
    blank = _dot(shape, (-100, -100))
    layout = PhotoBank([blank, blank], size)
    scene = _first_scene(layout, frames, lambda scene: scene.present[1] and not scene.present[2]
                         and scene.photo[1] == 1)
    # The dot at the texture's centre: sprite-local (0, 0), inside every shape (bank texels, counted in the photo).
    texel = _to_texel(scene.layer_to_texel[1], np.zeros(2)) - layout.boxes[1, :2]
    bank = PhotoBank([blank, _dot(shape, texel, channel=2)], size)
    video = render([scene], bank)[0, :, 2].numpy()
    to_local = scene.screen_to_layer[:, 1]
    sprite_centre = -np.linalg.solve(to_local[:, :, :2], to_local[:, :, 2:])[..., 0] * size
    first = int(np.flatnonzero(((sprite_centre > 8) & (sprite_centre < size - 8)).all(-1))[0])
    tracks, visible = scene.track([[first, *sprite_centre[first]]])
    np.testing.assert_allclose(tracks[0], sprite_centre, atol=1e-4)
    centre, mass = _centroids(video)
    inside = ((tracks[0] > 8) & (tracks[0] < size - 8)).all(-1)
    assert inside.sum() > 5
    np.testing.assert_allclose(centre[inside], tracks[0][inside], atol=0.06)
    assert visible[0][inside].all()


def _scenes(bank, frames, seeds):
    return [draw_scene(seed, bank, frames) for seed in seeds]


def test_visibility_is_the_rendered_layer_and_covers_occlusion_and_exits():
    size, frames = 32, 24
    bank = PhotoBank(stand_in_photos(), size)
    seen_cover = seen_exit = seen_sprite_over_sprite = 0
    for scene in _scenes(bank, frames, range(12)):
        layers = layer_map([scene], range(frames))[0].numpy()  # (T, H, W)
        # Queries at every pixel centre of one frame: their owner is exactly the rendered layer there.
        tq = scene.seed % frames
        yy, xx = np.mgrid[0:size, 0:size] + 0.5
        queries = np.stack([np.full(xx.size, tq), xx.ravel(), yy.ravel()], -1)
        assert (scene.layer_at(queries) == layers[tq].ravel()).all()
        tracks, visible = scene.track(queries)
        owner = layers[tq].ravel()
        # Elsewhere: where the track lands in a pixel whose 3 x 3 neighbourhood lies in the frame and shows one
        # layer, it is visible exactly when that layer is its own.
        cells = np.floor(tracks).astype(int)
        in_frame = ((tracks >= 0) & (tracks < size)).all(-1)
        padded = np.pad(layers, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
        uniform = np.ones(layers.shape, bool)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                uniform &= padded[:, dy:dy + size, dx:dx + size] == layers
        n, t = np.nonzero(in_frame)
        cx, cy = cells[n, t, 0], cells[n, t, 1]
        clear = uniform[t, cy, cx]
        shown = layers[t, cy, cx]
        assert (visible[n, t][clear] == (shown == owner[n])[clear]).all()
        assert not visible[~in_frame].any()
        seen_exit += (~in_frame).sum()
        seen_cover += (in_frame & ~visible).sum()
        seen_sprite_over_sprite += ((owner[n] == 1) & (shown == 2) & clear).sum()
    assert seen_exit and seen_cover and seen_sprite_over_sprite


def test_rendering_is_deterministic_and_independent_of_the_batch_and_frame_choice():
    size = 32
    bank = PhotoBank(stand_in_photos(), size)
    scenes = _scenes(bank, 10, [5, 6, 7])
    together = render(scenes, bank)
    assert together.dtype == torch.uint8 and together.shape == (3, 10, 3, size, size)
    assert torch.equal(together, render(_scenes(PhotoBank(stand_in_photos(), size), 10, [5, 6, 7]), bank))
    for i, scene in enumerate(scenes):
        assert torch.equal(render([scene], bank)[0], together[i])
    assert torch.equal(render(scenes, bank, [7, 2])[:, 0], together[:, 7])
    video = render_video(scenes[0], bank)
    assert video.shape == (10, size, size, 3) and np.array_equal(video, together[0].permute(0, 2, 3, 1).numpy())
    assert not torch.equal(together[0], together[1])
    # Tinted grey photographs and untouched colour ones: some clip of a few shows both.
    tints = [draw_scene(seed, bank, 2).tint for seed in range(20)]
    assert any((t != 1).any() for t in tints) and any((t == 1).all() for t in tints)


def test_scenes_are_resolution_free_in_frame_units():
    """The same seed and photographs give the same motion at 32 and 64 pixels (frame units), so pixels per token
    change only the detail, as with the generator's clips."""
    for seed in range(6):
        small, large = (draw_scene(seed, PhotoBank(stand_in_photos(), size), 6) for size in (32, 64))
        queries = np.array([[0, 10.5, 20.5], [2, 5.0, 30.0], [5, 31.0, 0.5]])
        tracks_small, visible_small = small.track(queries)
        tracks_large, visible_large = large.track(queries * [1, 2, 2])
        np.testing.assert_allclose(tracks_large, 2 * tracks_small, rtol=1e-6, atol=1e-4)
        assert small.caption == large.caption


def test_queries_are_visible_at_their_frame_and_a_third_lie_on_sprites():
    size = 32
    bank = PhotoBank(stand_in_photos(), size)
    scene = next(s for s in _scenes(bank, 12, range(20)) if s.present[1:].sum() == 2)
    queries = sample_queries(scene, 30, np.random.default_rng(0))
    assert queries.shape == (30, 3)
    assert (scene.layer_at(queries) > 0).sum() == 10
    _, visible = scene.track(queries)
    assert visible[np.arange(30), queries[:, 0].astype(int)].all()


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(UserError, match="no photographs"):
        PhotoBank([], 32)
    with pytest.raises(UserError, match=r"uint8 \(H, W, 3\)"):
        PhotoBank([np.zeros((40, 40), np.uint8)], 32)
    bank = PhotoBank(stand_in_photos(), 32)
    with pytest.raises(UserError, match="another clip size"):
        render([draw_scene(0, PhotoBank(stand_in_photos(size=16), 16), 2)], bank)
    with pytest.raises(UserError, match="no scenes"):
        render([], bank)
    with pytest.raises(UserError, match="query frames must lie in 0..1"):
        draw_scene(0, bank, 2).track([[2, 1.0, 1.0]])


def _tiny_parameters():
    return {"split": "heldout", "size": 32, "points": 6,
            "sets": {"frames4": {"frames": 4, "seeds": [400_000, 400_001]},
                     "frames9": {"frames": 9, "seeds": [400_002]}}}


def test_frozen_sets_rebuild_bit_identically_and_a_difference_is_one_line():
    photos = stand_in_photos()
    checksums = {f"p{k}": f"{k:064x}" for k in range(len(photos))}
    parameters = _tiny_parameters()
    sets, bank_digest = photo_clips.build_frozen_sets(parameters, photos)
    manifest = {**parameters, "photos": checksums, "photo_bank_sha256": bank_digest,
                "sets": {name: {**spec, "clips": photo_clips.set_digests(sets)[name]}
                         for name, spec in parameters["sets"].items()}}
    again, again_digest = photo_clips.build_frozen_sets(manifest, photos)
    photo_clips.check_frozen_sets(manifest, checksums, again, again_digest)
    entry = again["frames9"]["photo_400002"]
    assert entry["video"].shape == (9, 32, 32, 3) and entry["points"].shape == (6, 9, 2)
    assert entry["occluded"].dtype == bool and entry["points"].dtype == np.float32

    entry["video"][0, 0, 0, 0] ^= 1
    with pytest.raises(UserError, match=r"^frozen photo clip frames9/photo_400002 differs .*'video'") as error:
        photo_clips.check_frozen_sets(manifest, checksums, again, again_digest)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="resampling the photographs"):
        photo_clips.check_frozen_sets(manifest, checksums, again, "0" * 64)
    with pytest.raises(UserError, match="not the ones the manifest lists"):
        photo_clips.check_frozen_sets(manifest, {**checksums, "p0": "f" * 64}, again, again_digest)


def test_photo_checksums_follow_the_corpus_and_the_order_photos_load_in():
    from difftrack.data.photos import load_corpus, photo_checksums

    corpus = load_corpus()
    heldout = photo_checksums("heldout")
    assert list(heldout.items()) == [(f"plasma-workspace-wallpapers/{entry['path']}", entry["sha256"])
                                     for entry in corpus["packages"]["plasma-workspace-wallpapers"]["files"]]
    train = photo_checksums("train")
    assert list(train) == [f"scikit-image/{file}" for file in corpus["scikit_image"]["files"]]
    assert all(len(digest) == 64 for digest in train.values())
    with pytest.raises(UserError, match="unknown photo split"):
        photo_checksums("test")


def test_frozen_parameters_take_their_seeds_from_the_photo_clip_range():
    from difftrack.evaluation import seeds

    parameters = photo_clips.frozen_parameters()
    used = [seed for spec in parameters["sets"].values() for seed in spec["seeds"]]
    assert len(set(used)) == len(used) == 16 and min(used) == seeds.PHOTO_CLIP_SEED_START
    assert max(used) < seeds.CALIBRATION_SEED_START
    assert [spec["frames"] for spec in parameters["sets"].values()] == [24, 64]


def test_frozen_sets_are_written_as_the_tapvid_reader_reads_them_and_only_when_they_match(tmp_path):
    photos = dict(zip(("a", "b", "c"), stand_in_photos()))
    checksums = {key: "0" * 64 for key in photos}
    manifest, out = tmp_path / "manifest.json", tmp_path / "clips"
    made = dict(photos=photos, checksums=checksums)
    done = photo_clips.make_frozen_sets(out, manifest, "the command", new_manifest=True,
                                        parameters=_tiny_parameters(), **made)
    assert done[0] == f"wrote {manifest}" and json.loads(manifest.read_text())["command"] == "the command"
    assert photo_clips.make_frozen_sets(out, manifest, "the command", **made)[0] == f"every clip matches {manifest}"
    videos = {name: load() for name, load in TapVidReader("davis", out / "frames4").entries()}
    assert sorted(videos) == ["photo_400000", "photo_400001"] and videos["photo_400000"].video.shape == (4, 32, 32, 3)

    saved = json.loads(manifest.read_text())
    saved["sets"]["frames4"]["clips"]["photo_400001"]["points"] = "0" * 64
    manifest.write_text(json.dumps(saved))
    before = (out / "frames4" / "tapvid_davis.pkl").read_bytes()
    with pytest.raises(UserError, match="^frozen photo clip frames4/photo_400001 differs"):
        photo_clips.make_frozen_sets(out, manifest, "the command", **made)
    assert (out / "frames4" / "tapvid_davis.pkl").read_bytes() == before  # nothing written on a mismatch
    manifest.write_text(json.dumps({"split": "heldout"}))
    with pytest.raises(UserError, match="lacks photo_bank_sha256, photos, points, sets, size"):
        photo_clips.read_manifest(manifest)


def test_the_build_command_refuses_an_unreadable_manifest_in_one_line(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "benchmarks/make_photo_clips.py", "--out", str(tmp_path / "clips"),
                           "--manifest", str(tmp_path / "missing.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and err[0].startswith("error: cannot read the manifest")
    assert not (tmp_path / "clips").exists()


def test_the_committed_manifest_rebuilds_from_the_heldout_photographs(tmp_path):
    """The frozen sets as committed (minutes of CPU for 16 clips at 256 x 256; the first clip of each set here)."""
    from difftrack.data.photos import load_photos, photo_checksums

    if not all((PHOTO_CACHE / key).is_file() for key in photo_checksums("heldout")):
        pytest.skip("needs the held-out photographs cached (fetched from Debian's plasma-workspace-wallpapers by "
                    "`python benchmarks/make_photo_clips.py --out runs/photo_clips`); no network in tests")
    manifest = json.loads((REPO / "benchmarks" / "data" / "photo_clips.json").read_text())
    first = {**manifest, "sets": {name: {**spec, "seeds": spec["seeds"][:1],
                                         "clips": dict(list(spec["clips"].items())[:1])}
                                  for name, spec in manifest["sets"].items()}}
    photos = load_photos("heldout", cache_dir=PHOTO_CACHE)
    sets, bank_digest = photo_clips.build_frozen_sets(first, list(photos.values()))
    photo_clips.check_frozen_sets(first, photo_checksums("heldout"), sets, bank_digest)
    pickle.dumps(sets)  # the layout the command writes
