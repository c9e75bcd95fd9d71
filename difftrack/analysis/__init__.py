"""Layer x step correspondence analysis of video DiTs (``difftrack analyze``).

Stages, one module each: :mod:`labellers` (ground truth), :mod:`metrics` (per (layer, step)
reductions and scores), :mod:`ranking` (aggregation and harmonic-mean ranking), :mod:`report`
(JSON, CSV, figures, index.html), :mod:`jobs` (configuration, videos and their sources),
:mod:`analyzer` (one video's work) and :mod:`runner` (sharding over torchrun, resume, the merged report).
"""

import importlib

# Each public name imported from its stage on first use (PEP 562): `difftrack analyze` builds its jobs
# (:mod:`jobs`) in its argument checks, before torch loads.
_PUBLIC = {"AnalysisConfig": "difftrack.analysis.jobs", "VideoJob": "difftrack.analysis.jobs",
           "Analyzer": "difftrack.analysis.analyzer", "run_analysis": "difftrack.analysis.runner"}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'difftrack.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
