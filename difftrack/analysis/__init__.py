"""Layer x step correspondence analysis of video DiTs (``difftrack analyze``).

Stages, one module each: :mod:`labellers` (ground truth), :mod:`metrics` (per (layer, step)
reductions and scores), :mod:`ranking` (aggregation and harmonic-mean ranking), :mod:`report`
(JSON, CSV, figures, index.html) and :mod:`runner` (generated and real videos, sharding, resume).
"""

from difftrack.analysis.runner import AnalysisConfig, Analyzer, VideoJob, run_analysis

__all__ = ["AnalysisConfig", "Analyzer", "VideoJob", "run_analysis"]
