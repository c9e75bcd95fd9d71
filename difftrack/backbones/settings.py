"""Per-model settings that benchmarks and analyses write and commands read, read in this one place
through the backbone (:meth:`Backbone.occlusion_thresholds`, :meth:`Backbone.recommendation`):

- the tracker's occlusion calibration, ``difftrack/calibration/<model>.json``, written by
  ``benchmarks/calibrate_tracker.py``;
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
