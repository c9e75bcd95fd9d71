import os
import pickle
import re

import cv2
import numpy as np
import pytest

from difftrack.data.tapvid import TapVidReader, restricted_load
from difftrack.errors import UserError
from difftrack.evaluation.protocols import metric_mode, sample_queries, to_protocol


def _entry(num_frames=4, height=32, width=48, num_points=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"video": rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8),
            "points": rng.uniform(0, 1, (num_points, num_frames, 2)).astype(np.float32),
            "occluded": rng.random((num_points, num_frames)) < 0.3}


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "tapvid_davis.pkl").write_bytes(pickle.dumps({"bear": {"video": _RunsShell(marker)}}))
    with pytest.raises(UserError) as info:
        TapVidReader("davis", tmp_path)
    message = str(info.value)
    assert "\n" not in message and f"{os.system.__module__}.system" in message
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_scalars_and_containers_load_at_every_protocol(tmp_path, protocol):
    data = {"a": [np.arange(6, dtype=np.float32).reshape(2, 3), np.float64(2.5), np.dtype("int16")],
            "b": (b"\xff\xd8jpeg", {1, 2}, frozenset({3}), np.array([True, False]))}
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = restricted_load(path)
    assert np.array_equal(loaded["a"][0], data["a"][0]) and loaded["a"][0].dtype == np.float32
    assert loaded["a"][1] == 2.5 and loaded["a"][2] == np.dtype("int16")
    assert loaded["b"][0] == b"\xff\xd8jpeg" and loaded["b"][1] == {1, 2} and loaded["b"][2] == frozenset({3})


def test_other_classes_are_refused(tmp_path):
    from collections import OrderedDict

    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(OrderedDict(a=1)))
    with pytest.raises(UserError, match="collections.OrderedDict"):
        restricted_load(path)


def test_garbage_file_is_a_user_error(tmp_path):
    (tmp_path / "tapvid_davis.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match="not a readable TAP-Vid pickle"):
        TapVidReader("davis", tmp_path)


def test_davis_reader_takes_the_directory_or_the_pickle_and_sorts_names(tmp_path):
    entries = {"zebra": _entry(seed=1), "bear": _entry(seed=2), "mallard": _entry(seed=3)}
    (tmp_path / "tapvid_davis.pkl").write_bytes(pickle.dumps(entries))
    for root in (tmp_path, tmp_path / "tapvid_davis.pkl"):
        reader = TapVidReader("davis", root)
        assert reader.num_videos == 3
        names = [name for name, _ in reader.entries()]
        assert names == ["bear", "mallard", "zebra"]
    video = reader.load("mallard")
    assert np.array_equal(video.video, entries["mallard"]["video"])
    assert np.array_equal(video.points, entries["mallard"]["points"])
    assert np.array_equal(video.occluded, entries["mallard"]["occluded"])


def test_rgb_stacking_entries_are_named_by_index(tmp_path):
    entries = [_entry(seed=s) for s in range(3)]
    (tmp_path / "tapvid_rgb_stacking.pkl").write_bytes(pickle.dumps(entries))
    reader = TapVidReader("rgb_stacking", tmp_path)
    assert [name for name, _ in reader.entries()] == ["0000", "0001", "0002"]
    assert np.array_equal(reader.load("0002").video, entries[2]["video"])


def test_kinetics_shards_are_read_in_sorted_order_and_jpeg_frames_decoded(tmp_path):
    colours = {}
    # Written in reverse so directory order cannot happen to be sorted order.
    for shard in (1, 0):
        entries = []
        for i in range(2):
            colour = np.array([40 * shard + 10 * i, 200 - 50 * i, 90], np.uint8)  # RGB, flat: JPEG keeps it
            frames = np.broadcast_to(colour, (3, 24, 32, 3))
            jpegs = [cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2BGR))[1].tobytes()
                     for f in frames]
            entry = _entry(num_frames=3)
            entry["video"] = jpegs
            entries.append(entry)
            colours[f"{shard:04d}_of_0010_{i:04d}"] = colour
        (tmp_path / f"{shard:04d}_of_0010.pkl").write_bytes(pickle.dumps(entries))
    (tmp_path / "README.md").write_text("not a shard")
    reader = TapVidReader("kinetics", tmp_path)
    names = [name for name, _ in reader.entries()]
    assert names == ["0000_of_0010_0000", "0000_of_0010_0001", "0001_of_0010_0000", "0001_of_0010_0001"]
    for name, load in reader.entries():
        video = load().video
        assert video.shape == (3, 24, 32, 3) and video.dtype == np.uint8
        assert np.abs(video.astype(int) - colours[name]).max() <= 2


@pytest.mark.parametrize("dataset, expected", [("davis", "tapvid_davis.pkl"),
                                               ("rgb_stacking", "tapvid_rgb_stacking.pkl"),
                                               ("kinetics", "_of_0010.pkl")])
def test_root_without_expected_files_is_a_one_line_user_error(tmp_path, dataset, expected):
    with pytest.raises(UserError) as info:
        TapVidReader(dataset, tmp_path)
    assert expected in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="does not exist"):
        TapVidReader(dataset, tmp_path / "missing")


def test_entry_without_tapvid_fields_is_a_user_error(tmp_path):
    (tmp_path / "tapvid_davis.pkl").write_bytes(pickle.dumps({"bear": {"video": np.zeros((2, 4, 4, 3), np.uint8)}}))
    with pytest.raises(UserError, match="not a TAP-Vid entry"):
        TapVidReader("davis", tmp_path).load("bear")


def _jpeg(height, width):
    return cv2.imencode(".jpg", np.zeros((height, width, 3), np.uint8))[1].tobytes()


@pytest.mark.parametrize("video, message", [
    (None, "has frames of type NoneType"),
    ("abc", "has frames of type str"),
    (np.zeros((4, 32, 48), np.uint8), "has frames uint8 (4, 32, 48)"),
    (np.zeros((4, 32, 48, 3), np.float32), "has frames float32"),
    ([b"jpeg", 3, b"jpeg", b"jpeg"], "holds frames that are not JPEG bytes"),
    ([_jpeg(32, 48), _jpeg(32, 48), b"not a jpeg", _jpeg(32, 48)], "not a decodable JPEG"),
    ([_jpeg(32, 48), _jpeg(32, 48), _jpeg(16, 48), _jpeg(32, 48)], "holds frames of different sizes"),
])
def test_a_malformed_video_is_a_user_error_and_its_structure_is_found_without_decoding(tmp_path, video, message):
    entry = _entry(num_frames=4)
    entry["video"] = video
    (tmp_path / "tapvid_davis.pkl").write_bytes(pickle.dumps({"bear": entry}))
    reader = TapVidReader("davis", tmp_path)
    with pytest.raises(UserError, match=re.escape(message)):
        reader.load("bear")
    if message not in ("not a decodable JPEG", "holds frames of different sizes"):  # found only by decoding
        with pytest.raises(UserError, match=re.escape(message)):
            reader.checked_names()


def test_checked_names_stop_at_the_limit_before_a_malformed_entry(tmp_path):
    bad = _entry()
    bad["points"] = bad["points"][:, :2]
    (tmp_path / "tapvid_davis.pkl").write_bytes(pickle.dumps({"a": _entry(), "b": _entry(), "c": bad}))
    reader = TapVidReader("davis", tmp_path)
    assert reader.checked_names(2) == ["a", "b"]
    with pytest.raises(UserError, match="video c in .* has points"):
        reader.checked_names()


def test_protocol_resizes_frames_to_256_and_scales_normalised_points():
    entry = _entry(num_frames=2, height=48, width=96)
    entry["video"][:, :, 48:] = 255  # right half white
    entry["video"][:, :, :48] = 0
    frames, points = to_protocol(entry["video"], entry["points"])
    assert frames.shape == (2, 256, 256, 3) and frames.dtype == np.uint8
    assert frames[:, :, :120].max() == 0 and frames[:, :, 136:].min() == 255
    assert np.allclose(points, entry["points"] * 256)


def test_first_mode_queries_each_track_at_its_first_visible_frame_as_t_x_y():
    points = np.zeros((3, 4, 2), np.float32)
    points[..., 0] = np.arange(4) * 10 + 1  # x
    points[..., 1] = np.arange(4) * 10 + 100  # y, distinct from x so a (t, y, x) mix-up shows
    occluded = np.array([[True, False, False, True],
                         [True, True, True, True],  # never visible: dropped
                         [False, True, False, False]])
    q = sample_queries(points, occluded, "first")
    assert q.track_index.tolist() == [0, 2]
    assert q.query_points.tolist() == [[1, 11, 110], [0, 1, 100]]
    assert np.array_equal(q.target_points, points[[0, 2]]) and np.array_equal(q.occluded, occluded[[0, 2]])


def test_strided_mode_queries_every_fifth_frame_where_the_track_is_visible():
    num_frames = 12
    points = np.random.default_rng(0).uniform(0, 256, (3, num_frames, 2)).astype(np.float32)
    occluded = np.zeros((3, num_frames), bool)
    occluded[0, 5] = True  # not queried at frame 5
    occluded[1, :] = True  # never queried
    occluded[2, 0] = True  # not queried at frame 0
    q = sample_queries(points, occluded, "strided")
    assert q.query_points[:, 0].tolist() == [0, 5, 10, 10]
    assert q.track_index.tolist() == [0, 2, 0, 2]
    for (t, x, y), n in zip(q.query_points, q.track_index):
        assert (x, y) == tuple(points[n, int(t)])


def test_release_protocol_queries_only_the_tracks_visible_on_frame_0_there_and_scores_as_first():
    points = np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2)
    occluded = np.array([[False, False, True, False], [True, False, False, False], [False, True, True, True]])
    queries = sample_queries(points, occluded, "release")
    assert queries.track_index.tolist() == [0, 2]  # track 1 appears only after frame 0: dropped
    assert queries.query_points.tolist() == [[0, *points[0, 0]], [0, *points[2, 0]]]
    assert metric_mode("release") == "first" and metric_mode("strided") == "strided"
    with pytest.raises(UserError, match="unknown query mode"):
        sample_queries(points, occluded, "third")
