"""Layer x step correspondence analysis of video DiTs (``difftrack analyze``).

Stages, one module each: :mod:`labellers` (ground truth), :mod:`metrics` (per (layer, step)
reductions and scores), :mod:`ranking` (aggregation and harmonic-mean ranking), :mod:`report`
(JSON, CSV, figures, index.html), :mod:`jobs` (configuration, videos and their sources),
:mod:`analyzer` (one video's work) and :mod:`runner` (sharding over torchrun, resume, the merged report).
"""

from difftrack.analysis.analyzer import Analyzer
from difftrack.analysis.jobs import AnalysisConfig, VideoJob
from difftrack.analysis.runner import run_analysis

__all__ = ["AnalysisConfig", "Analyzer", "VideoJob", "run_analysis"]
