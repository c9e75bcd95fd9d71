"""Every benchmark or study script that tracks or samples with a model takes the CLI's --device and --dtype (run as
programs). Not listed: gpu_smoke.py (CUDA and bfloat16 by definition, or --cpu) and real_memory.py (fake tensors,
no device)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOADING_MODELS = ["benchmarks/tapvid.py", "benchmarks/track_ablation.py", "benchmarks/embedded_eval.py",
                  "benchmarks/gpu_native.py", "studies/calibrate_tracker.py", "studies/cag.py", "studies/track_speed.py"]


@pytest.mark.parametrize("script", LOADING_MODELS)
def test_a_model_loading_script_takes_device_and_dtype(script):
    done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert "--device" in done.stdout and "--dtype" in done.stdout, script
