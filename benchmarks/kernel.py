"""Time and peak memory of the fused matching kernel against the naive dense computation and a bare q @ k.T.

Shapes are CogVideoX analysis shapes: 1350 frame-0 query points against 13 latent frames of 30x45
tokens plus 226 text tokens, 30 heads x 64 (2B) or 48 heads x 64 (5B), float32 on the CPU.

Cases, each in its own fresh subprocess so that one case's memory cannot hide another's:
- dense: difftrack.kernels.reference in float32 (every logit and probability materialised), run once;
- fused: difftrack.kernels.match(backend="torch") with its default memory budget;
- bare_matmul: one q @ k.T over all heads and points (output materialised, the brief's compute floor);
- bare_matmul_chunked: the same flops in the fused kernel's query chunks into one reused buffer
  (the tighter floor: the matmul without the output's page faults).

Peak memory is the process's kernel-tracked high-water RSS (getrusage ru_maxrss) after the first
call minus the RSS just before it, with inputs, imports and a tiny warm-up call already resident.
Times are wall-clock; the reported value is the median of --repeats calls (the first call, which
is the memory call, included). The load average is recorded because the CPU may be shared.

    python benchmarks/kernel.py                 # 2B and 5B shapes -> benchmarks/results/kernel.json
    python benchmarks/kernel.py --quick --out /tmp/kernel.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SHAPES = {
    "cogvideox-2b": dict(heads=30, dim=64, points=1350, frames=13, grid=(30, 45), text=226),
    "cogvideox-5b": dict(heads=48, dim=64, points=1350, frames=13, grid=(30, 45), text=226),
    "quick": dict(heads=6, dim=64, points=96, frames=4, grid=(12, 16), text=32),
}
CASES = ("dense", "fused", "bare_matmul", "bare_matmul_chunked")
TARGET_TIME_RATIO = 1.5
TARGET_EXTRA_MB = 100


def make_inputs(shape: dict, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    heads, dim, tokens = shape["heads"], shape["dim"], shape["grid"][0] * shape["grid"][1]
    # Unit-variance q and k give logits of the spread seen after CogVideoX's q/k layer norm.
    query = torch.randn(heads, shape["points"], dim, generator=gen)
    key = torch.randn(heads, shape["frames"] * tokens, dim, generator=gen)
    text_key = torch.randn(heads, shape["text"], dim, generator=gen)
    return query, key, text_key


def case_function(case: str, shape: dict, query, key, text_key):
    from difftrack.kernels import match
    from difftrack.kernels.reference import match_reference
    from difftrack.kernels.torch_chunked import DEFAULT_MEMORY_BUDGET, _chunk_rows

    grid = shape["grid"]
    if case == "dense":
        return lambda: match_reference(query, key, grid[0], grid[1], 0, text_key, 1 / shape["dim"] ** 0.5,
                                       dtype=torch.float32)
    if case == "fused":
        return lambda: match(query, key, grid, 0, text_key=text_key, backend="torch")
    if case == "bare_matmul":
        return lambda: torch.matmul(query, key.transpose(1, 2))
    if case == "bare_matmul_chunked":
        heads, points = query.shape[:2]
        chunk = _chunk_rows(DEFAULT_MEMORY_BUDGET, (heads + 2) * key.shape[1] * 4, points)

        def chunked():
            buffer = torch.empty(heads * chunk * key.shape[1])
            for n0 in range(0, points, chunk):
                n1 = min(n0 + chunk, points)
                torch.bmm(query[:, n0:n1], key.transpose(1, 2), out=buffer[:heads * (n1 - n0) * key.shape[1]]
                          .view(heads, n1 - n0, key.shape[1]))
        return chunked
    raise ValueError(case)


def summarise(shape_results: dict) -> None:
    """Ratios against the targets, from whichever cases have been measured so far."""
    cases = shape_results["cases"]
    summary = {}
    if "fused" in cases:
        fused = cases["fused"]
        summary["fused_extra_peak_mb"] = fused["extra_peak_mb"]
        summary["meets_memory_target"] = fused["extra_peak_mb"] <= TARGET_EXTRA_MB
        for floor in ("bare_matmul", "bare_matmul_chunked"):
            if floor in cases:
                summary[f"fused_over_{floor}"] = fused["median_s"] / cases[floor]["median_s"]
                summary[f"fused_over_{floor}_cpu"] = fused["median_cpu_s"] / cases[floor]["median_cpu_s"]
        if "bare_matmul" in cases:
            summary["meets_time_target_cpu"] = summary["fused_over_bare_matmul_cpu"] <= TARGET_TIME_RATIO
        if "dense" in cases:
            summary["dense_over_fused_time"] = cases["dense"]["median_s"] / fused["median_s"]
            summary["dense_over_fused_memory"] = cases["dense"]["extra_peak_mb"] / max(fused["extra_peak_mb"], 1e-9)
    shape_results["summary"] = summary


def current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def run_case(shape_name: str, case: str, repeats: int) -> dict:
    """Runs in the subprocess: returns times and the extra peak RSS of one case."""
    shape = SHAPES[shape_name]
    tiny = dict(shape, points=4, frames=1, grid=(2, 3), text=2)
    case_function(case, tiny, *make_inputs(tiny))()  # thread pools, MKL handles, lazy imports
    inputs = make_inputs(shape)
    fn = case_function(case, shape, *inputs)
    rss_before = current_rss()
    high_water_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times, cpu_times = [], []
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn()
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
    high_water_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del result
    for _ in range(repeats - 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {
        "times_s": times,
        "median_s": statistics.median(times),
        "cpu_times_s": cpu_times,
        "median_cpu_s": statistics.median(cpu_times),
        "extra_peak_mb": (high_water_after - rss_before) / 2**20,
        # when the call never rose above an earlier high-water mark the number is only an upper bound
        "peak_exact": high_water_after > high_water_before,
        "input_mb": sum(t.numel() * t.element_size() for t in inputs) / 2**20,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one small shape, for a smoke run")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), help="default: the 2B and 5B shapes")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per case (median reported); dense runs once")
    p.add_argument("--dense-shapes", nargs="*", default=["cogvideox-2b", "quick"],
                   help="shapes on which to run the dense baseline (it needs ~3x the fp32 logits in RAM)")
    p.add_argument("--threads", type=int, help="torch intra-op threads in every case (default: torch's default)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "kernel.json"))
    p.add_argument("--worker", nargs=2, metavar=("SHAPE", "CASE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_case(args.worker[0], args.worker[1], args.repeats)))
        return 0

    from tqdm import tqdm

    from difftrack.io import write_json

    shapes = ["quick"] if args.quick else (args.shapes or ["cogvideox-2b", "cogvideox-5b"])
    jobs = [(s, c) for s in shapes for c in CASES if c != "dense"]
    jobs += [(s, "dense") for s in shapes if s in args.dense_shapes]  # last: the slowest and the least interesting
    results = {s: {"shape": SHAPES[s], "cases": {}} for s in shapes}
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "targets": {"fused_over_bare_matmul_at_2b": TARGET_TIME_RATIO, "fused_extra_peak_mb_at_2b": TARGET_EXTRA_MB},
        "memory_method": "extra peak = getrusage ru_maxrss after the first call minus RSS just before it, in a fresh "
                         "subprocess per case with inputs and a warm-up call already resident; peak_exact is false "
                         "if the call stayed under an earlier high-water mark (then it is an upper bound)",
        "time_method": "wall clock and process CPU time, median of the calls (dense: a single call), first call "
                       "included; on a shared CPU the wall clock mostly measures the scheduler, so the target is "
                       "judged on CPU time (exactly the compute when --threads 1)",
        "host": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "nice": os.nice(0)},
        "shapes": results,
    }
    for shape_name, case in tqdm(jobs, desc="kernel benchmark"):
        load_before = os.getloadavg()
        repeats = 1 if case == "dense" else args.repeats
        threads = ["--threads", str(args.threads)] if args.threads else []
        done = subprocess.run([sys.executable, __file__, "--worker", shape_name, case, "--repeats", str(repeats),
                               *threads], capture_output=True, text=True, check=True)
        entry = json.loads(done.stdout.strip().splitlines()[-1])
        entry["loadavg_before"], entry["loadavg_after"] = load_before, os.getloadavg()
        results[shape_name]["cases"][case] = entry
        summarise(results[shape_name])
        write_json(args.out, report)  # after every case, so a long run that is stopped keeps what it measured

    rows = []
    for shape_name in shapes:
        cases = results[shape_name]["cases"]
        for case, entry in cases.items():
            rows.append(f"{shape_name:14s} {case:20s} {entry['median_s']:9.3f} {entry['median_cpu_s']:9.3f}"
                        f" {entry['extra_peak_mb']:11.1f}"
                        f"  {len(entry['times_s'])} run(s)"
                        f"  load {entry['loadavg_before'][0]:.1f}->{entry['loadavg_after'][0]:.1f}")
        summary = results[shape_name]["summary"]
        rows.append(f"{shape_name:14s} fused/bare_matmul CPU {summary['fused_over_bare_matmul_cpu']:.2f}x "
                    f"(chunked floor {summary['fused_over_bare_matmul_chunked_cpu']:.2f}x; wall "
                    f"{summary['fused_over_bare_matmul']:.2f}x), fused extra peak {summary['fused_extra_peak_mb']:.1f} MB")
    print(f"{'shape':14s} {'case':20s} {'wall s':>9s} {'cpu s':>9s} {'extra MB':>11s}")
    print("\n".join(rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
