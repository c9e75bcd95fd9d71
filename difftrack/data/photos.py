"""A corpus of photographs from Debian's wallpaper packages and scikit-image, split into train and held-out.

``photo_corpus.json`` next to this module defines it: for each Debian package (gnome-backgrounds,
plasma-workspace-wallpapers, ukui-wallpapers) its version, its role (``train`` or ``heldout``) and the selected
files with their SHA-256 and size in bytes; and the scikit-image data files that join the train split. The
photographs are not in the repository. :func:`fetch_corpus` downloads the packages with ``apt-get download``,
unpacks them with ``dpkg -x``, checks every file against its SHA-256 and caches them under
``$DIFFTRACK_CACHE/photos`` (default ``~/.cache/difftrack/photos``); :func:`load_photos` reads a split.

Selection rule (the JSON's ``selection_rule`` says the same): a file is kept only if it is a camera photograph of
a real scene, decided by eye on contact sheets of every image file in the packages and in scikit-image, with
native-resolution crops where a thumbnail left doubt. Drawings, illustrations, 3D and vector renders, abstract
patterns, gradients, logos, solid colours, scientific imaging (microscopy, fundus, telescope) and text images are
dropped. Of several files showing one picture (same SHA-256, light and dark variants, portrait crops, resolution
variants, preview thumbnails) only the largest landscape file is kept. A measurable pre-filter helped: the
shorter side is at least ``min_short_side`` (300) pixels. Every other image file of the packages is listed under
``rejected``, so the selection can be reviewed file by file.

Split. In Debian 12 (bookworm) gnome-backgrounds 43.1-1 and ukui-wallpapers 20.04.3-1.1 hold no photograph;
plasma-workspace-wallpapers 4:5.27.5-2 holds 11 (2560x1600 JPEGs, 6.2 MB). That package is held out whole, as
holding out either other package would leave an empty evaluation set. The train split is scikit-image's
astronaut, brick, camera, chelsea, coffee, coins, grass, gravel, motorcycle (left view) and rocket (the grey
ones are returned as three equal channels).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np

from difftrack.errors import UserError

CORPUS_FILE = Path(__file__).with_name("photo_corpus.json")
SPLITS = ("train", "heldout")


def default_cache_dir() -> Path:
    # The root the prompt-embedding cache uses, spelled out here so the data package does not import torch.
    return Path(os.environ.get("DIFFTRACK_CACHE") or Path.home() / ".cache" / "difftrack") / "photos"


def load_corpus() -> dict:
    return json.loads(CORPUS_FILE.read_text())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_complete(root: Path, corpus: dict) -> bool:
    for name, package in corpus["packages"].items():
        for entry in package["files"]:
            path = root / name / entry["path"]
            if not path.is_file() or path.stat().st_size != entry["size"] or _sha256(path) != entry["sha256"]:
                return False
    return True


def _last_message(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")]
    return (errors or lines or ["no output"])[-1]


def _download_and_unpack(name: str, version: str, work: Path, hint: str) -> Path:
    spec = f"{name}={version}"
    try:
        run = subprocess.run(["apt-get", "download", spec], cwd=work, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(f"cannot fetch the photo corpus: apt-get is not installed; {hint}") from None
    if run.returncode != 0:
        raise UserError(f"cannot fetch the photo corpus: `apt-get download {spec}` failed "
                        f"({_last_message(run.stderr + run.stdout)}); {hint}")
    debs = sorted(work.glob(f"{name}_*.deb"))
    if not debs:
        raise UserError(f"cannot fetch the photo corpus: `apt-get download {spec}` wrote no {name}_*.deb; {hint}")
    out = work / name
    try:
        run = subprocess.run(["dpkg", "-x", str(debs[0]), str(out)], capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(f"cannot fetch the photo corpus: dpkg is not installed; {hint}") from None
    if run.returncode != 0:
        raise UserError(f"cannot fetch the photo corpus: `dpkg -x {debs[0].name}` failed "
                        f"({_last_message(run.stderr + run.stdout)}); {hint}")
    return out


def _install(staging: Path, root: Path, corpus: dict) -> None:
    """Move the finished ``staging`` directory onto ``root``, replacing an incomplete one."""
    trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old.", dir=root.parent))
    try:
        if root.exists():
            os.replace(root, trash / root.name)
        os.replace(staging, root)
    except OSError as exc:
        # Another process (a second rank of the same run) may have installed the corpus first; its copy is as good.
        if not _is_complete(root, corpus):
            raise UserError(f"cannot write the photo corpus to {root} ({exc}); make it writable or set "
                            f"DIFFTRACK_CACHE to a writable folder") from None
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def fetch_corpus(cache_dir: str | os.PathLike | None = None) -> Path:
    """Download, verify and cache every selected photograph; return the cache directory.

    A no-op when the cache already holds every file with its committed SHA-256. Any failure raises a one-line
    :class:`UserError`; the cache is replaced only by a complete, verified copy.
    """
    corpus = load_corpus()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if _is_complete(root, corpus):
        return root
    needed = {name: package for name, package in corpus["packages"].items() if package["files"]}
    versions = ", ".join(f"{name}={package['version']}" for name, package in needed.items())
    hint = (f"run on a Debian 12 (bookworm) machine with network access whose package index has {versions} "
            f"(`apt-get update` first), or copy a complete photos folder from such a machine to {root}")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.new.", dir=root.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it 0700; the cache gets the user's usual permissions
    try:
        with tempfile.TemporaryDirectory(prefix="difftrack-photos-") as work:
            for name, package in needed.items():
                unpacked = _download_and_unpack(name, package["version"], Path(work), hint)
                for entry in package["files"]:
                    source = unpacked / entry["path"]
                    if not source.is_file():
                        raise UserError(f"cannot fetch the photo corpus: {name} has no file {entry['path']}; {hint}")
                    digest = _sha256(source)
                    if digest != entry["sha256"]:
                        raise UserError(f"cannot fetch the photo corpus: checksum mismatch for {name}/{entry['path']} "
                                        f"(SHA-256 {digest}, expected {entry['sha256']}); {hint}")
                    target = staging / name / entry["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, target)
        _install(staging, root, corpus)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _scikit_image_dir() -> Path:
    import skimage.data

    return Path(skimage.data.data_dir)


def _read_rgb(path: Path, size: int | None, remedy: str) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read the photograph {path}; {remedy}")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if size is not None:
        h, w = image.shape[:2]
        scale = size / min(h, w)
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    return image


def photo_checksums(split: str) -> dict[str, str]:
    """SHA-256 of every photograph of ``split``, keyed and ordered as :func:`load_photos` returns them: the corpus's
    own for the Debian packages' files, the installed file's for scikit-image's (its wheel pins them)."""
    if split not in SPLITS:
        raise UserError(f"unknown photo split {split!r}; choose one of {', '.join(SPLITS)}")
    corpus = load_corpus()
    checksums = {f"{name}/{entry['path']}": entry["sha256"] for name, package in corpus["packages"].items()
                 if package["role"] == split for entry in package["files"]}
    if corpus["scikit_image"]["role"] == split:
        checksums.update({f"scikit-image/{file}": _sha256(_scikit_image_dir() / file)
                          for file in corpus["scikit_image"]["files"]})
    return checksums


def load_photos(split: str, size: int | None = None,
                cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The photographs of ``split`` as HxWx3 uint8 RGB arrays, keyed ``<package>/<path>`` (``scikit-image/<file>``).

    ``size`` resizes each so that its shorter side has that many pixels (aspect kept); None keeps it native. The
    Debian packages are fetched (see :func:`fetch_corpus`) only when the split has files from them.
    """
    if split not in SPLITS:
        raise UserError(f"unknown photo split {split!r}; choose one of {', '.join(SPLITS)}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise UserError(f"photo size {size!r} is not a positive integer (the shorter side in pixels)")
    corpus = load_corpus()
    paths = {}
    packages = {name: package for name, package in corpus["packages"].items()
                if package["role"] == split and package["files"]}
    if packages:
        root = fetch_corpus(cache_dir)
        remedy = f"delete {root} and run again to fetch the corpus anew"
        paths.update({f"{name}/{entry['path']}": (root / name / entry["path"], remedy)
                      for name, package in packages.items() for entry in package["files"]})
    if corpus["scikit_image"]["role"] == split:
        data_dir = _scikit_image_dir()
        remedy = "reinstall scikit-image (pip install --force-reinstall scikit-image), whose wheel bundles it"
        paths.update({f"scikit-image/{file}": (data_dir / file, remedy) for file in corpus["scikit_image"]["files"]})
    return {key: _read_rgb(path, size, remedy) for key, (path, remedy) in paths.items()}
