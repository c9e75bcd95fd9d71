"""benchmarks/gpu_smoke.py as a program: a clean no-op without CUDA, and its per-family cases run (with --cpu);
the bit-for-bit comparison its repeatability rests on."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from difftrack.testing import as_arrays, same_bits

ROOT = Path(__file__).resolve().parents[1]


def _gpu_smoke(*argv):
    done = subprocess.run([sys.executable, "benchmarks/gpu_smoke.py", *map(str, argv)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_gpu_smoke_says_so_in_one_line_without_cuda_and_its_family_cases_run_on_the_cpu(tmp_path):
    if not torch.cuda.is_available():
        out = _gpu_smoke("--out", tmp_path / "g.json").strip().splitlines()
        assert len(out) == 1 and "no CUDA device" in out[0] and not (tmp_path / "g.json").exists()
    _gpu_smoke("--cpu", "--kinds", "cogvideox-rope", "ltx-video", "--out", tmp_path / "cpu.json")
    result = json.loads((tmp_path / "cpu.json").read_text())
    assert result["device"] == "cpu" and result["dtype"] == "float32" and "kernel" not in result
    cases = result["families"]["cogvideox-rope"]
    assert {"track", "analyze_add", "analyze_clean", "analyze_invert", "generate_none", "generate_cfg",
            "generate_cag", "generate_cfg_offload", "probe_features"} == set(cases)
    assert all(case["repeatable"] for case in cases.values()), cases
    assert cases["generate_cfg_offload"]["same_as_resident"] and cases["generate_cfg_offload"]["max_abs_diff_vs_resident"] == 0
    # LTX-Video's tiny analysis has metrics with nothing to count (NaN): the same NaN twice is the same result.
    ltx = result["families"]["ltx-video"]
    assert all(case.get("repeatable") for case in ltx.values()), ltx


def test_metrics_that_are_nan_in_both_runs_count_as_the_same_bits():
    assert same_bits(as_arrays((np.array([1.0, np.nan]),)), as_arrays((np.array([1.0, np.nan]),)))
    assert not same_bits(as_arrays((np.array([1.0, np.nan]),)), as_arrays((np.array([2.0, np.nan]),)))
    assert same_bits(as_arrays({"b": torch.ones(2), "a": [0, 1]}), as_arrays({"a": [0, 1], "b": torch.ones(2)}))
    assert not same_bits(as_arrays((np.zeros(2),)), as_arrays((np.zeros(3),)))
