"""How soon bad input fails: CPU seconds of `difftrack` processes that must stop before a model loads.

Each case runs as a fresh process (`python -m difftrack.cli ...`, as a user runs it) on inputs made here in a
temporary directory; the table records its exit code, its `error:` line, and its CPU time (user + system, from
resource.getrusage(RUSAGE_CHILDREN)) and wall time, the median of --repeats runs. Two reference rows frame it:
the floor every invocation pays (`import difftrack.cli`; the checks themselves never import torch) and a case
refused only after the embedded model has loaded.

    python benchmarks/preload_checks.py --out benchmarks/results/preload_checks.json
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (name, argv after `python`; {in} is the input folder). "floor" and "after load" are the reference rows.
CASES = [
    ("floor: import difftrack.cli", ["-c", "import difftrack.cli"]),
    ("analyze without a video source", ["-m", "difftrack.cli", "analyze", "--out", "{in}/a"]),
    ("analyze --video missing.mp4", ["-m", "difftrack.cli", "analyze", "--video", "{in}/missing.mp4", "--out", "{in}/a"]),
    ("track missing.mp4", ["-m", "difftrack.cli", "track", "{in}/missing.mp4"]),
    ("analyze --layers 99", ["-m", "difftrack.cli", "analyze", "--synthetic-seeds", "1", "--layers", "99",
                             "--out", "{in}/a"]),
    ("analyze --steps 9 --num-steps 5", ["-m", "difftrack.cli", "analyze", "--synthetic-seeds", "1", "--steps", "9",
                                         "--num-steps", "5", "--out", "{in}/a"]),
    ("analyze --video one_frame.mp4", ["-m", "difftrack.cli", "analyze", "--video", "{in}/one_frame.mp4",
                                       "--out", "{in}/a"]),
    ("analyze --tracks tracks.npy", ["-m", "difftrack.cli", "analyze", "--video", "{in}/clip.mp4", "--tracks",
                                     "{in}/tracks.npy", "--out", "{in}/a"]),
    ("analyze --video damaged.mp4", ["-m", "difftrack.cli", "analyze", "--video", "{in}/damaged.mp4",
                                     "--out", "{in}/a"]),
    ("track --layers 99", ["-m", "difftrack.cli", "track", "{in}/clip.mp4", "--layers", "99"]),
    ("track --steps 60 --num-steps 50", ["-m", "difftrack.cli", "track", "{in}/clip.mp4", "--steps", "60",
                                         "--num-steps", "50"]),
    ("track --grid 100000", ["-m", "difftrack.cli", "track", "{in}/clip.mp4", "--grid", "100000"]),
    ("track --points nan.json", ["-m", "difftrack.cli", "track", "{in}/clip.mp4", "--points", "{in}/nan.json"]),
    ("track damaged.mp4", ["-m", "difftrack.cli", "track", "{in}/damaged.mp4"]),
    ("generate --guidance cag --cag-layers 9", ["-m", "difftrack.cli", "generate", "--prompt", "a disc moves up",
                                                "--guidance", "cag", "--cag-layers", "9", "--out", "{in}/v.mp4"]),
    ("probe compare --block 6", ["-m", "difftrack.cli", "probe", "compare", "--block", "6", "--out", "{in}/c"]),
    ("after load: track --steps 60 (range known from the model)",
     ["-m", "difftrack.cli", "track", "{in}/clip.mp4", "--steps", "60"]),
]
LIMIT_CPU_S = 2.0


def run_case(argv: list[str], cwd: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    return {"exit_code": done.returncode, "cpu_s": cpu, "wall_s": wall, "stderr_last": lines[-1] if lines else ""}


def main(argv=None):
    from difftrack.options import integer, output_file

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=integer(min=1), default=3, help="runs per case, median reported (default 3)")
    p.add_argument("--out", type=output_file(".json"),
                   default=str(Path(__file__).parent / "results" / "preload_checks.json"))
    args = p.parse_args(argv)

    from difftrack.io import write_json
    from difftrack.testing import bad_inputs

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bad_inputs(folder)
        run_case(CASES[0][1], folder)  # untimed: the first process reads the libraries from disk
        for name, case in CASES:
            runs = [run_case([a.format(**{"in": folder}) for a in case], folder) for _ in range(args.repeats)]
            row = {"case": name, "argv": case, "exit_code": runs[0]["exit_code"],
                   "cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 2),
                   "wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
                   "error": runs[0]["stderr_last"].replace(str(folder), "{in}")}
            rows.append(row)
            print(f"{row['cpu_s']:6.2f} CPU-s {row['wall_s']:6.2f} s  exit {row['exit_code']}  {name}", flush=True)
    floor = rows[0]["cpu_s"]
    for row in rows:
        row["over_floor_cpu_s"] = round(row["cpu_s"] - floor, 2)
    write_json(args.out, {
        "what": "CPU seconds (user + system) of a fresh `python -m difftrack.cli` process per case, median of "
                f"{args.repeats}, and their excess over the first row, the floor every invocation pays (imports); "
                "the last row is a case refused only after the embedded model loads",
        "limit_cpu_s": LIMIT_CPU_S, "floor_cpu_s": floor,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "load_average": [round(v, 2) for v in os.getloadavg()]},
        "cases": rows})
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
