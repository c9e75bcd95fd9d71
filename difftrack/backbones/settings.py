"""Per-model settings that benchmarks and analyses write and commands read, read in this one place
through the backbone (:class:`ModelSettings`: ``occlusion_thresholds``, ``recommendation``, ``revision``):

- the tracker's occlusion calibration, ``difftrack/calibration/<model>.json``, written by
  ``studies/calibrate_tracker.py``;
- the analysis recommendation, ``recommendation.json``, written by ``difftrack analyze --out DIR`` and
  shipped inside a model directory for ``--layers auto``.
"""

from __future__ import annotations

import json
from pathlib import Path

from difftrack.errors import UserError

CALIBRATION_DIR = Path(__file__).resolve().parents[1] / "calibration"
# Occlusion thresholds of a model without a calibration file.
UNCALIBRATED = {"cycle_threshold": 1.5, "peak_threshold": 0.0}


def calibration_path(model_name: str) -> Path:
    """Where a model's occlusion calibration lives (hub ids and paths flattened into the file stem)."""
    return CALIBRATION_DIR / f"{model_name.strip('/').replace('/', '--')}.json"


def occlusion_thresholds(model_name: str) -> dict[str, float]:
    """{"cycle_threshold", "peak_threshold"} of the model's calibration (null = never occluded by it: inf),
    else the uncalibrated defaults."""
    path = calibration_path(model_name)
    calibrated = json.loads(path.read_text()) if path.is_file() else {}
    values = {k: calibrated.get(k, default) for k, default in UNCALIBRATED.items()}
    return {k: float("inf") if v is None else float(v) for k, v in values.items()}


def configured(config_class, config, overrides: dict, what: str):
    """A copy of ``config`` (or of ``config_class()``) with ``overrides``, refusing unknown names; the caller's
    config stays as it was."""
    from dataclasses import fields, replace

    unknown = sorted(set(overrides) - {f.name for f in fields(config_class)})
    if unknown:
        raise TypeError(f"unknown {what} option {', '.join(unknown)}")
    return replace(config or config_class(), **overrides)


def fill_occlusion_thresholds(config, thresholds: dict[str, float]) -> None:
    """Set the ``cycle_threshold`` and ``peak_threshold`` a caller left None to ``thresholds`` (the model's,
    ``Backbone.occlusion_thresholds``); refuse negative ones given."""
    for k, threshold in thresholds.items():
        if getattr(config, k) is None:
            setattr(config, k, threshold)
        elif not getattr(config, k) >= 0:
            raise UserError(f"{k} must be a number >= 0, got {getattr(config, k)}")


def read_recommendation(path: str | Path) -> dict:
    """recommendation.json (or the analysis directory holding it): {"layers", "steps", "num_steps", ...}."""
    path = Path(path)
    if path.is_dir():
        path = path / "recommendation.json"
    if not path.is_file():
        raise UserError(f"no analysis recommendation at {path}; run `difftrack analyze --out DIR` first "
                        f"and pass --recommendation DIR, or give explicit layers")
    return json.loads(path.read_text())


class ModelSettings:
    """Backbone mixin: the settings files of the model at ``source``, and which weights it holds."""

    def shipped_recommendation(self) -> Path | None:
        """recommendation.json shipped inside a local model directory (what `--layers auto` reads by default)."""
        path = Path(self.source) / "recommendation.json" if self.source else None
        return path if path is not None and path.is_file() else None

    def recommendation(self, path=None) -> tuple[list[int], list[int] | None, int | None]:
        """Layers, steps and the schedule length they index, as `difftrack analyze` recommends them: from
        ``path`` (recommendation.json or its directory), or the one shipped with the model."""
        if path is None:
            path = self.shipped_recommendation()
            if path is None:
                raise UserError(f"`auto` layers need --recommendation DIR (from `difftrack analyze --out DIR`); "
                                f"{self.name} ships no recommendation.json")
        rec = read_recommendation(path)
        return self.check_layers(rec["layers"]), rec.get("steps"), rec.get("num_steps")

    def occlusion_thresholds(self) -> dict[str, float]:
        """The tracker's calibrated occlusion thresholds for this model (difftrack/calibration/)."""
        return occlusion_thresholds(self.name)

    def revision(self) -> str:
        """Which weights these are: a hub snapshot's commit (the cache's snapshots/<commit>), else a digest of the
        directory's model_index.json and transformer config (equal weights' directories share configs, so it
        names the architecture and the source path names the copy)."""
        import hashlib

        path = Path(self.source) if self.source else None
        if path is not None and path.parent.name == "snapshots":
            return path.name
        digest = hashlib.sha256()
        for part in ("model_index.json", "transformer/config.json"):
            if path is not None and (path / part).is_file():
                digest.update((path / part).read_bytes())
        return f"config-sha256:{digest.hexdigest()[:16]}"
