"""benchmarks/kernel.py --bound as a program: the native pass it times does the work it claims (the per-frame
softmax and both head-sum accumulations), so its time is a bound on that work and not on something cheaper."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="--bound compiles with g++")


def test_native_passes_are_the_softmax_with_both_accumulations_and_exp_sum(tmp_path):
    out = tmp_path / "bound.json"
    done = subprocess.run([sys.executable, "benchmarks/kernel.py", "--bound", "--quick", "--repeats", "1", "--out",
                           str(out)], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    errors = result["native_pass_errors"]
    assert errors["softmax_accumulate"] <= 1e-5  # within 1e-8 + 1e-5 |truth| of float64 torch, element by element
    assert errors["softmax_accumulate_cheapest"] <= 1e-4  # the degree-4 exp: the parity tests' rtol
    assert errors["exp_sum"] <= 1e-5
    assert set(result["shapes"]["quick"]["passes_cpu_s"]) >= {"native_softmax_accumulate", "native_exp_sum"}
