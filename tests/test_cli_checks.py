"""Bad command-line input is refused by checks that never import torch (nor diffusers or transformers): the
parser, the registry's facts and the files' headers are all they need, so the refusal costs a fraction of a
second instead of the seconds torch takes to import (benchmarks/preload_checks.py times it)."""

import json
import subprocess
import sys

import numpy as np

from difftrack.io import write_video

HEAVY = ("torch", "diffusers", "transformers")

# Each argv must end in one `error:` line and exit 2; {in} is the folder of the test's inputs.
BAD_INVOCATIONS = [
    ["track", "{in}/missing.mp4"],
    ["track", "{in}/clip.mp4", "--layers", "99"],
    ["track", "{in}/clip.mp4", "--steps", "60", "--num-steps", "50"],
    ["track", "{in}/clip.mp4", "--grid", "100000"],
    ["track", "{in}/clip.mp4", "--points", "{in}/nan.json"],
    ["analyze", "--out", "{in}/a"],
    ["analyze", "--synthetic-seeds", "1", "--layers", "99", "--out", "{in}/a"],
    ["analyze", "--video", "{in}/one_frame.mp4", "--out", "{in}/a"],
    ["generate", "--prompt", "a disc moves up", "--guidance", "cag", "--cag-layers", "9", "--out", "{in}/v.mp4"],
    ["probe", "compare", "--block", "6", "--out", "{in}/c"],
]

# One process runs every invocation through the CLI's own entry point, and after each says which of the heavy
# libraries are loaded.
RUNNER = """
import json, sys
from difftrack.cli import main

for argv in json.loads(sys.argv[1]):
    code = main(argv)
    print(json.dumps({"argv": argv, "code": code, "loaded": [m for m in %r if m in sys.modules]}), flush=True)
""" % (HEAVY,)


def test_bad_input_is_refused_without_importing_torch(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    write_video(tmp_path / "clip.mp4", frames)
    write_video(tmp_path / "one_frame.mp4", frames[:1])
    (tmp_path / "nan.json").write_text("[[NaN, 10, 10]]")
    argvs = [[a.replace("{in}", str(tmp_path)) for a in argv] for argv in BAD_INVOCATIONS]
    run = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(argvs)], capture_output=True, text=True,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    results = [json.loads(line) for line in run.stdout.splitlines()]
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(results) == len(argvs) == len(errors)
    for result, error in zip(results, errors):
        assert result["code"] == 2 and error.startswith("error: "), (result, error)
        assert result["loaded"] == [], result
