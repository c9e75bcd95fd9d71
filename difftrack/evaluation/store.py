"""Sharding and resume of a long evaluation over many videos (`difftrack analyze`, the TAP-Vid benchmark).

Each process takes its share of the items (item i goes to the rank i % world; without torchrun one process
takes them all), and every finished item goes to a :class:`ResultStore` at once, so that a run that stops
resumes where it stopped and its result does not depend on how many processes ran or on where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np

from difftrack.errors import UserError
from difftrack.io import atomic_path, write_json

Item = TypeVar("Item")
RUN_FILE = "run.json"


def my_share(items: Iterable[Item], rank: int, world: int) -> Iterator[tuple[int, Item]]:
    """The ``(index, item)`` pairs of ``items`` that ``rank`` of ``world`` processes takes: index % world == rank."""
    for index, item in enumerate(items):
        if index % world == rank:
            yield index, item


class ResultStore:
    """The finished items of one run in a folder: per item ``<key>.json`` (its record) and, when it has arrays,
    ``<key>.npz`` (plain arrays, compressed, no pickled objects), and ``run.json``, the run's description.

    Every file is written atomically, the arrays before the record, so an item whose record is there is
    complete. ``run`` describes everything that decides an item's result (data, model, settings): a folder
    that holds another run's items is refused (:meth:`check`), never mixed into this one.
    """

    def __init__(self, directory: str | Path, run: dict):
        self.directory = Path(directory)
        self.run = json.loads(json.dumps(run))  # as run.json holds it (tuples as lists), to compare with it

    def check(self) -> None:
        """Refuse a folder that holds the items of another run (or of a run that did not describe itself)."""
        run_file = self.directory / RUN_FILE
        if run_file.is_file():
            stored = json.loads(run_file.read_text())
            if stored != self.run:
                raise UserError(f"{self.directory} holds results of another run ({json.dumps(stored)}); "
                                f"choose another --out or delete that folder")
        elif self.directory.is_dir() and any(self.directory.glob("*.json")):
            raise UserError(f"{self.directory} holds results of an unknown run (no {RUN_FILE}); choose another --out "
                            f"or delete that folder")

    def record_path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def arrays_path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def load(self, key: str) -> dict | None:
        """The record of a finished item, or None if the item is not finished."""
        path = self.record_path(key)
        return json.loads(path.read_text()) if path.is_file() else None

    def arrays(self, key: str) -> dict[str, np.ndarray]:
        with np.load(self.arrays_path(key), allow_pickle=False) as data:
            return {name: data[name] for name in data.files}

    def save(self, key: str, record: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
        """Store one finished item. The folder and run.json appear with the first item, so a run that fails on its
        first item leaves nothing behind."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.directory / RUN_FILE).is_file():
            write_json(self.directory / RUN_FILE, self.run)
        if arrays is not None:
            with atomic_path(self.arrays_path(key), suffix=".npz") as tmp:
                np.savez_compressed(tmp, **arrays)
        write_json(self.record_path(key), record)
