import hashlib
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from difftrack.data import photos
from difftrack.errors import UserError

FAKE_APT_GET = """#!{python}
import os, sys
from pathlib import Path
spec = sys.argv[2]
name, version = spec.split("=", 1)
with open(os.environ["FAKE_APT_LOG"], "a") as log:
    log.write(spec + "\\n")
# The fake .deb only names the directory the fake dpkg copies out.
Path(f"{{name}}_{{version}}_all.deb").write_text(str(Path(os.environ["FAKE_APT_REPO"]) / name))
"""

FAKE_DPKG = """#!{python}
import shutil, sys
from pathlib import Path
assert sys.argv[1] == "-x"
shutil.copytree(Path(sys.argv[2]).read_text(), sys.argv[3])
"""

FAILING_APT_GET = """#!{python}
import sys
print("E: Unable to locate package " + sys.argv[2], file=sys.stderr)
print("W: a warning after the error, as apt-get prints them", file=sys.stderr)
sys.exit(100)
"""


def _script(directory: Path, name: str, text: str) -> None:
    path = directory / name
    path.write_text(text.format(python=sys.executable))
    path.chmod(0o755)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A two-package corpus in a fake Debian repository, with only fake apt-get and dpkg on PATH."""
    repo, bin_dir = tmp_path / "repo", tmp_path / "bin"
    bin_dir.mkdir()
    images = {}
    for i, (name, rel) in enumerate([("pkg-a", "usr/share/a/one.png"), ("pkg-b", "usr/share/b/two.png")]):
        path = repo / name / rel
        path.parent.mkdir(parents=True)
        bgr = np.random.default_rng(i).integers(0, 256, (6, 8, 3), dtype=np.uint8)
        cv2.imwrite(str(path), bgr)
        images[name] = (rel, path, bgr)
    corpus = {
        "selection_rule": "test files",
        "min_short_side": 1,
        "packages": {
            "pkg-a": {"version": "1.0", "role": "heldout", "rejected": [],
                      "files": [{"path": images["pkg-a"][0], "sha256": _sha256(images["pkg-a"][1]),
                                 "size": images["pkg-a"][1].stat().st_size}]},
            "pkg-b": {"version": "2:2.0-1", "role": "train", "rejected": [],
                      "files": [{"path": images["pkg-b"][0], "sha256": _sha256(images["pkg-b"][1]),
                                 "size": images["pkg-b"][1].stat().st_size}]},
            "pkg-c": {"version": "3.0", "role": "train", "rejected": ["usr/share/c/drawing.png"], "files": []},
        },
        "scikit_image": {"role": "train", "files": ["coffee.png"]},
    }
    corpus_file = tmp_path / "corpus.json"

    def write_corpus():
        corpus_file.write_text(json.dumps(corpus))

    write_corpus()
    monkeypatch.setattr(photos, "CORPUS_FILE", corpus_file)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_APT_REPO", str(repo))
    monkeypatch.setenv("FAKE_APT_LOG", str(tmp_path / "apt.log"))

    def install_apt(apt_get=FAKE_APT_GET):
        _script(bin_dir, "apt-get", apt_get)
        _script(bin_dir, "dpkg", FAKE_DPKG)

    return SimpleNamespace(bin=bin_dir, images=images, corpus=corpus, write_corpus=write_corpus,
                           install_apt=install_apt, cache=tmp_path / "cache" / "photos", log=tmp_path / "apt.log")


def test_committed_corpus_is_well_formed():
    corpus = photos.load_corpus()
    assert isinstance(corpus["selection_rule"], str) and len(corpus["selection_rule"]) > 100
    assert isinstance(corpus["min_short_side"], int) and corpus["min_short_side"] > 0
    packages = corpus["packages"]
    assert set(packages) == {"gnome-backgrounds", "plasma-workspace-wallpapers", "ukui-wallpapers"}
    assert all(p["role"] in photos.SPLITS and p["version"] for p in packages.values())
    heldout = [name for name, p in packages.items() if p["role"] == "heldout"]
    assert len(heldout) == 1 and packages[heldout[0]]["files"]
    by_split = {split: set() for split in photos.SPLITS}
    for name, package in packages.items():
        paths = [entry["path"] for entry in package["files"]]
        assert len(paths) == len(set(paths)) and not set(paths) & set(package["rejected"])
        for entry in package["files"]:
            assert not entry["path"].startswith("/") and ".." not in entry["path"].split("/")
            assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
            assert isinstance(entry["size"], int) and entry["size"] > 0
            assert entry["sha256"] not in by_split["train"] | by_split["heldout"], f"duplicate picture {entry}"
            by_split[package["role"]].add(entry["sha256"])
    skimage = corpus["scikit_image"]
    assert skimage["role"] == "train" and len(skimage["files"]) == len(set(skimage["files"]))
    assert all((photos._scikit_image_dir() / file).is_file() for file in skimage["files"])


def test_default_cache_follows_difftrack_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFTRACK_CACHE", str(tmp_path))
    assert photos.default_cache_dir() == tmp_path / "photos"
    monkeypatch.delenv("DIFFTRACK_CACHE")
    assert photos.default_cache_dir() == Path.home() / ".cache" / "difftrack" / "photos"


def test_fetch_downloads_only_packages_with_files_verifies_and_is_then_a_no_op(fake):
    fake.install_apt()
    assert photos.fetch_corpus(fake.cache) == fake.cache
    assert fake.log.read_text().split() == ["pkg-a=1.0", "pkg-b=2:2.0-1"]
    for name, (rel, source, _) in fake.images.items():
        assert (fake.cache / name / rel).read_bytes() == source.read_bytes()
    assert [p.name for p in fake.cache.parent.iterdir()] == ["photos"]  # no staging or trash left behind

    (fake.bin / "apt-get").unlink()
    assert photos.fetch_corpus(fake.cache) == fake.cache  # complete and valid: apt-get is not needed

    fake.install_apt()
    cached = fake.cache / "pkg-a" / fake.images["pkg-a"][0]
    cached.write_bytes(b"damaged")
    photos.fetch_corpus(fake.cache)
    assert cached.read_bytes() == fake.images["pkg-a"][1].read_bytes()


def test_checksum_mismatch_is_a_one_line_error_and_writes_nothing(fake):
    fake.install_apt()
    fake.corpus["packages"]["pkg-b"]["files"][0]["sha256"] = "0" * 64
    fake.write_corpus()
    with pytest.raises(UserError) as err:
        photos.fetch_corpus(fake.cache)
    message = str(err.value)
    assert "checksum mismatch for pkg-b/usr/share/b/two.png" in message and "\n" not in message
    assert str(fake.cache) in message  # the fix names the folder to copy the corpus to
    assert not fake.cache.parent.exists() or not any(fake.cache.parent.iterdir())


@pytest.mark.parametrize("apt_get, expected", [
    (FAILING_APT_GET, "`apt-get download pkg-a=1.0` failed (E: Unable to locate package pkg-a=1.0)"),
    (None, "apt-get is not installed"),
])
def test_apt_get_failure_is_a_one_line_error(fake, apt_get, expected):
    if apt_get is not None:
        fake.install_apt(apt_get)
    with pytest.raises(UserError) as err:
        photos.fetch_corpus(fake.cache)
    message = str(err.value)
    assert expected in message and "\n" not in message and "bookworm" in message
    assert not fake.cache.exists()


def test_load_photos_reads_a_populated_cache_as_rgb(fake):
    # Copied in by hand, as on a machine without apt-get: nothing on PATH, so any download attempt would fail.
    for name, (rel, source, _) in fake.images.items():
        (fake.cache / name / rel).parent.mkdir(parents=True)
        (fake.cache / name / rel).write_bytes(source.read_bytes())
    heldout = photos.load_photos("heldout", cache_dir=fake.cache)
    rel, _, bgr = fake.images["pkg-a"]
    assert list(heldout) == [f"pkg-a/{rel}"]
    np.testing.assert_array_equal(heldout[f"pkg-a/{rel}"], bgr[..., ::-1])

    train = photos.load_photos("train", size=4, cache_dir=fake.cache)
    assert list(train) == [f"pkg-b/{fake.images['pkg-b'][0]}", "scikit-image/coffee.png"]
    assert train[f"pkg-b/{fake.images['pkg-b'][0]}"].shape == (4, 5, 3)
    assert train["scikit-image/coffee.png"].shape == (4, 6, 3)
    assert all(image.dtype == np.uint8 for image in train.values())
    assert not fake.log.exists()


def test_load_photos_rejects_an_unknown_split_and_size(fake):
    with pytest.raises(UserError, match="unknown photo split 'test'"):
        photos.load_photos("test", cache_dir=fake.cache)
    with pytest.raises(UserError, match="not a positive integer"):
        photos.load_photos("train", size=0, cache_dir=fake.cache)
