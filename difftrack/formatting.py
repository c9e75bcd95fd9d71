"""How numbers and counts read in tables, CSVs and messages."""

from __future__ import annotations

import numpy as np


def format_number(value, spec: str = ".3f", missing: str = "n/a", scale: float = 1.0) -> str:
    """One number in tables and CSVs: ``format(value * scale, spec)``, ``missing`` for None / NaN / inf;
    anything that is not a float passes through as ``str``."""
    if value is None or (isinstance(value, (float, np.floating)) and not np.isfinite(value)):
        return missing
    if isinstance(value, (float, np.floating)):
        return format(float(value) * scale, spec)
    return str(value)


def count_noun(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless n is 1: "1 video", "3 videos"."""
    return f"{n} {noun}" + ("" if n == 1 else "s")
