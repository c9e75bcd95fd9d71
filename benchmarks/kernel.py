"""CPU time and peak memory of the fused matching kernel against its matmul floor (and the naive dense computation).

Shapes are CogVideoX analysis shapes: 1350 frame-0 query points against 13 latent frames of 30x45
tokens plus 226 text tokens, 30 heads x 64 (2B) or 48 heads x 64 (5B), float32 on the CPU.

Cases, each in its own fresh subprocess so that one case's memory cannot hide another's:
- fused: difftrack.kernels.match(backend="torch") with its default memory budget;
- bare_matmul_chunked: THE FLOOR. q @ k.T only, in exactly the fused kernel's (head, query) chunks into one
  reused buffer, result discarded: the flops the fused kernel cannot avoid, without the page faults of a
  materialised output;
- bare_matmul_best_chunked: the same q @ k.T at whichever of a few chunkings (one head, 64 to 512 query
  points, or the fused kernel's) ran fastest in the subprocess, so that a chunking which slows the floor
  more than the kernel cannot flatter the ratio; the chunking it took is recorded;
- bare_matmul: one q @ k.T over all heads and points, output materialised (for reference);
- dense: difftrack.kernels.reference in float32 (every logit and probability materialised), run once.

Every case runs at --threads 1 (CPU time is then exactly the compute) and at the machine's thread
count; each reports the median of --repeats calls (at least 5) of process CPU time and of wall time,
and the 1-minute load average before and after, since the CPU may be shared. The targets are judged
on CPU time against the chunked floor.

Peak memory is the process's kernel-tracked high-water RSS (getrusage ru_maxrss) after the first
call minus the RSS just before it, with inputs, imports and a tiny warm-up call already resident.

    python benchmarks/kernel.py                 # 2B and 5B shapes -> benchmarks/results/kernel.json
    python benchmarks/kernel.py --quick --out /tmp/kernel.json
    python benchmarks/kernel.py --profile --out benchmarks/results/kernel_profile.json   # where the time goes
    python benchmarks/kernel.py --bound --out benchmarks/results/kernel_bound.json       # the least it can cost

--bound asks how close to the floor any exact fused kernel can come on this CPU. At one thread it times,
next to the chunked floor and q @ k.T in tiles of one head x 64-256 query points x one frame (whose output
stays in L2, as a fused kernel's scores must), the element-wise work every score needs after the matmul,
on rows that stay in L1 (so nothing is lost to memory traffic), as many scores as the shape has
(heads x points x (video + text) tokens): torch's exp and its softmax, and benchmarks/kernel_bound.cpp compiled with g++ -O3 -march=native
(per-frame max, a degree-6 polynomial exp, sum and the two head-sum accumulations; the cheapest form of that
work, without the max pass and with a degree-4 exp still inside the parity tests' rtol of 1e-4; and exp + sum
alone), each checked against torch first (``native_pass_errors`` in the JSON). A matmul plus a pass is the least
a kernel doing that pass after that matmul can cost.
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
CASES = ("fused", "bare_matmul_chunked", "bare_matmul_best_chunked", "bare_matmul", "dense")
FLOOR = "bare_matmul_chunked"
BEST_FLOOR = "bare_matmul_best_chunked"
BEST_FLOOR_QUERY_CHUNKS = (64, 128, 256, 384, 512)
TARGET_TIME_RATIO = 1.2
TARGET_EXTRA_MB = 64
MIN_REPEATS = 5


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
    from difftrack.kernels.torch_chunked import chunk_sizes

    grid = shape["grid"]
    if case == "dense":
        return lambda: match_reference(query, key, grid[0], grid[1], 0, text_key, 1 / shape["dim"] ** 0.5,
                                       dtype=torch.float32)
    if case == "fused":
        return lambda: match(query, key, grid, 0, text_key=text_key, backend="torch")
    if case == "bare_matmul":
        return lambda: torch.matmul(query, key.transpose(1, 2))
    heads, points, dim = query.shape
    video = key.shape[1]
    fused_chunks = chunk_sizes(heads, points, video, dim, torch.float32, key.dtype, cpu=True)
    if case == FLOOR:
        return chunked_matmul(query, key, *fused_chunks)
    if case == BEST_FLOOR:
        chunkings = [fused_chunks, *((1, min(n, points)) for n in BEST_FLOOR_QUERY_CHUNKS)]

        def seconds(chunking):
            start = time.process_time()
            chunked_matmul(query, key, *chunking)()
            return time.process_time() - start

        for chunking in chunkings:  # warm-up: first-touch of each buffer size
            seconds(chunking)
        best = min(chunkings, key=seconds)
        fn = chunked_matmul(query, key, *best)
        fn.chunking = best
        return fn
    raise ValueError(case)


def chunked_matmul(query, key, head_chunk: int, query_chunk: int):
    """q @ k.T in (head_chunk, query_chunk) blocks into one reused buffer, as the fused kernel computes its logits
    (each query chunk made contiguous and scaled first, as it does)."""
    heads, points, _ = query.shape
    video = key.shape[1]

    def run():
        buffer = torch.empty(head_chunk * query_chunk * video)
        for n0 in range(0, points, query_chunk):
            n1 = min(n0 + query_chunk, points)
            rows = query[:, n0:n1] * 1.0
            for h0 in range(0, heads, head_chunk):
                h1 = min(h0 + head_chunk, heads)
                out = buffer[:(h1 - h0) * (n1 - n0) * video].view(h1 - h0, n1 - n0, video)
                torch.bmm(rows[h0:h1], key[h0:h1].transpose(1, 2), out=out)
    return run


def frame_tiled_matmul(query, key, text_key, tokens: int, rows: int):
    """q @ k.T one head, ``rows`` query points and one frame (or the text) at a time into one reused buffer: an
    output tile that stays in L2, where a fused kernel would take its scores from."""
    heads, points, _ = query.shape
    frames = key.shape[1] // tokens

    def run():
        buffer = torch.empty(rows * max(tokens, text_key.shape[1]))
        for h in range(heads):
            for n0 in range(0, points, rows):
                block = query[h, n0:n0 + rows] * 1.0
                for f in range(frames):
                    out = buffer[:len(block) * tokens].view(len(block), tokens)
                    torch.mm(block, key[h, f * tokens:(f + 1) * tokens].T, out=out)
                out = buffer[:len(block) * text_key.shape[1]].view(len(block), -1)
                torch.mm(block, text_key[h].T, out=out)
    return run


FRAME_TILE_ROWS = (64, 128, 256)


def summarise(cases: dict) -> dict:
    """Ratios against the targets, from whichever cases of one (shape, threads) have been measured so far."""
    summary = {}
    if "fused" in cases:
        fused = cases["fused"]
        summary["fused_extra_peak_mb"] = fused["extra_peak_mb"]
        summary["meets_memory_target"] = fused["extra_peak_mb"] <= TARGET_EXTRA_MB
        for floor in (FLOOR, BEST_FLOOR, "bare_matmul"):
            if floor in cases:
                summary[f"fused_over_{floor}_cpu"] = fused["median_cpu_s"] / cases[floor]["median_cpu_s"]
                summary[f"fused_over_{floor}_wall"] = fused["median_s"] / cases[floor]["median_s"]
        if FLOOR in cases:
            summary["meets_time_target_cpu"] = summary[f"fused_over_{FLOOR}_cpu"] <= TARGET_TIME_RATIO
        if "dense" in cases:
            summary["dense_over_fused_cpu"] = cases["dense"]["median_cpu_s"] / fused["median_cpu_s"]
            summary["dense_over_fused_memory"] = cases["dense"]["extra_peak_mb"] / max(fused["extra_peak_mb"], 1e-9)
    return summary


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    chunking = getattr(fn, "chunking", None)
    return {
        **({"chunking": {"heads": chunking[0], "query_points": chunking[1]}} if chunking else {}),
        "times_s": times,
        "median_s": statistics.median(times),
        "cpu_times_s": cpu_times,
        "median_cpu_s": statistics.median(cpu_times),
        "extra_peak_mb": (high_water_after - rss_before) / 2**20,
        # when the call never rose above an earlier high-water mark the number is only an upper bound
        "peak_exact": high_water_after > high_water_before,
        "input_mb": sum(t.numel() * t.element_size() for t in inputs) / 2**20,
    }


def profile_fused(shape_name: str) -> dict:
    """Self CPU time of every operator inside one fused call at one thread (torch.profiler), next to the floor."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    shape = SHAPES[shape_name]
    inputs = make_inputs(shape)
    fused, floor = (case_function(case, shape, *inputs) for case in ("fused", FLOOR))
    fused(), floor()
    start = time.process_time()
    floor()
    floor_cpu = time.process_time() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fused()
    ops = sorted(((e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()), key=lambda o: -o[1])
    total = sum(seconds for _, seconds, _ in ops)
    return {"floor_cpu_s": floor_cpu, "fused_profiled_cpu_s": total,
            "ops": [{"op": name, "self_cpu_s": seconds, "share": seconds / total, "calls": calls}
                    for name, seconds, calls in ops if seconds >= 0.002 * total]}


def compile_bound_library(build_dir: Path):
    import ctypes
    import shutil

    compiler = shutil.which("g++")
    if compiler is None:
        raise SystemExit("error: --bound compiles benchmarks/kernel_bound.cpp and needs g++ on PATH")
    library = build_dir / "kernel_bound.so"
    subprocess.run([compiler, "-O3", "-march=native", "-shared", "-fPIC", "-o", str(library),
                    str(Path(__file__).with_name("kernel_bound.cpp"))], check=True)
    lib = ctypes.CDLL(str(library))
    lib.softmax_accumulate.restype = lib.exp_sum.restype = ctypes.c_float
    lib.softmax_accumulate.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_int]
    lib.exp_sum.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return lib, version


BOUND_ROWS = 8  # rows of one frame's logits per block: 8 x ~1.4k floats x 3 buffers stay in L1


def native_pass_errors(lib) -> dict:
    """How far the native passes are from the work they claim, against float64 torch on random logits: the
    per-frame softmax with both head-sum accumulations (cost += p / 30, joint += p / 2; exact and cheapest form:
    the largest (|error| - 1e-8) / |truth|) and exp + sum (the relative error), so that their times bound that
    work and not something cheaper."""
    rows, tokens = 3, 48
    logits = torch.randn(rows, tokens, generator=torch.Generator().manual_seed(0)) * 4
    probabilities = torch.softmax(logits.double(), -1)

    def excess(got, want):
        return float(((got.double() - want).abs() - 1e-8).div(want.abs()).max())

    errors = {}
    for cheapest, name in ((0, "softmax_accumulate"), (1, "softmax_accumulate_cheapest")):
        scores, cost, joint = logits.clone(), torch.full((rows, tokens), 0.25), torch.zeros(rows, tokens)
        lib.softmax_accumulate(scores.data_ptr(), cost.data_ptr(), joint.data_ptr(), rows, tokens, 1, cheapest)
        errors[name] = max(excess(cost, 0.25 + probabilities / 30), excess(joint, probabilities * 0.5))
    logits = torch.linspace(-60, 8, 2 * 64).view(2, 64)
    want = 3 * torch.exp(logits.double()).sum()
    errors["exp_sum"] = float(abs(lib.exp_sum(logits.data_ptr(), 2, 64, 3) - want) / want)
    return errors


def bound_shape(shape_name: str, lib, repeats: int) -> dict:
    """One thread: the chunked floor's CPU time and each element-wise pass's, over the shape's score count."""
    shape = SHAPES[shape_name]
    tokens = shape["grid"][0] * shape["grid"][1]
    lanes = 16
    row_tokens = -(-tokens // lanes) * lanes
    scores = shape["heads"] * shape["points"] * (shape["frames"] * tokens + shape["text"])
    blocks = max(1, round(scores / (BOUND_ROWS * row_tokens)))
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(BOUND_ROWS, row_tokens, generator=gen)
    work = torch.empty_like(logits)
    cost, joint = torch.zeros_like(logits), torch.zeros_like(logits)

    def torch_pass(op):
        def run():
            for _ in range(blocks):
                op(logits, work)
        return run

    passes = {
        "torch_exp": torch_pass(lambda src, dst: torch.exp(src, out=dst)),
        "torch_softmax": torch_pass(lambda src, dst: torch.ops.aten._softmax.out(src, -1, False, out=dst)),
        "native_softmax_accumulate": lambda: lib.softmax_accumulate(
            work.copy_(logits).data_ptr(), cost.data_ptr(), joint.data_ptr(), BOUND_ROWS, row_tokens, blocks, 0),
        "native_softmax_accumulate_cheapest": lambda: lib.softmax_accumulate(
            work.copy_(logits).data_ptr(), cost.data_ptr(), joint.data_ptr(), BOUND_ROWS, row_tokens, blocks, 1),
        "native_exp_sum": lambda: lib.exp_sum(logits.data_ptr(), BOUND_ROWS, row_tokens, blocks),
    }
    inputs = make_inputs(shape)
    floors = {"chunked": case_function(FLOOR, shape, *inputs),
              **{f"frame_tiles_{rows}_rows": frame_tiled_matmul(*inputs, tokens, rows) for rows in FRAME_TILE_ROWS}}

    def median_cpu(fn):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        return statistics.median(times)

    load_before = os.getloadavg()
    matmul = {name: median_cpu(fn) for name, fn in floors.items()}
    cpu = {name: median_cpu(fn) for name, fn in passes.items()}
    floor, fastest = matmul["chunked"], min(matmul.values())
    return {"scores": blocks * BOUND_ROWS * row_tokens, "matmul_cpu_s": matmul, "floor_cpu_s": floor,
            "fastest_matmul_cpu_s": fastest, "passes_cpu_s": cpu,
            # a kernel in the chunked floor's chunks, against that floor (its scores do not stay in L1 there)
            "lowest_fused_over_floor": {name: 1 + seconds / floor for name, seconds in cpu.items()},
            # a kernel in the fastest matmul's tiles, against that matmul, its own floor
            "lowest_fused_over_fastest_matmul": {name: 1 + seconds / fastest for name, seconds in cpu.items()},
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()}


def main(argv=None):
    from difftrack.options import integer, output_file

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one small shape, for a smoke run")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), help="default: the 2B and 5B shapes")
    p.add_argument("--repeats", type=integer(min=1), default=MIN_REPEATS,
                   help=f"timed calls per case, median reported (default {MIN_REPEATS}); dense runs once")
    p.add_argument("--dense-shapes", nargs="*", default=["cogvideox-2b", "quick"],
                   help="shapes on which to run the dense baseline, at the machine's thread count only (it needs "
                        "~3x the fp32 logits in RAM)")
    p.add_argument("--threads", nargs="+", type=integer(min=1), default=None,
                   help="torch intra-op thread counts to measure at (default: 1 and the machine's CPU count)")
    p.add_argument("--out", type=output_file(".json"), default=str(Path(__file__).parent / "results" / "kernel.json"))
    p.add_argument("--profile", action="store_true",
                   help="instead of timing: each shape's fused call under torch.profiler at one thread, operators by "
                        "self CPU time, next to the floor's CPU time")
    p.add_argument("--bound", action="store_true",
                   help="instead of timing the kernel: the floor next to the element-wise passes every score needs "
                        "(torch's and a native one in L1), i.e. the lowest ratio any exact fused kernel can reach")
    p.add_argument("--worker", nargs=3, metavar=("SHAPE", "CASE", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        torch.set_num_threads(int(args.worker[2]))
        print(json.dumps(run_case(args.worker[0], args.worker[1], args.repeats)))
        return 0

    from tqdm import tqdm

    from difftrack.io import write_json

    command = " ".join(["python", "benchmarks/kernel.py", *(sys.argv[1:] if argv is None else argv)])
    shapes = ["quick"] if args.quick else (args.shapes or ["cogvideox-2b", "cogvideox-5b"])
    if args.profile:
        report = {"command": command, "loadavg_before": os.getloadavg(),
                  "profiles": {name: profile_fused(name) for name in tqdm(shapes, desc="profiling")},
                  "loadavg_after": os.getloadavg()}
        write_json(args.out, report)
        for name, prof in report["profiles"].items():
            print(f"{name}: floor {prof['floor_cpu_s']:.2f} CPU-s, fused (profiled) {prof['fused_profiled_cpu_s']:.2f}")
            for op in prof["ops"][:8]:
                print(f"  {op['op']:32s} {op['self_cpu_s']:7.3f} s  {100 * op['share']:5.1f} %  x{op['calls']}")
        return 0
    if args.bound:
        import tempfile

        torch.set_num_threads(1)
        with tempfile.TemporaryDirectory() as build:
            lib, compiler = compile_bound_library(Path(build))
            errors = native_pass_errors(lib)
            bounds = {name: bound_shape(name, lib, args.repeats) for name in tqdm(shapes, desc="bounds")}
        write_json(args.out, {"command": command, "threads": 1, "repeats": args.repeats, "target": TARGET_TIME_RATIO,
                              "host": {"cpu": cpu_model(), "torch": torch.__version__, "compiler": compiler,
                                       "cpus": os.cpu_count(), "nice": os.nice(0)},
                              "native_pass_errors": errors, "shapes": bounds})
        for name, bound in bounds.items():
            print(f"{name}, {bound['scores'] / 1e6:.0f} M scores; matmul CPU-s: "
                  + ", ".join(f"{case} {seconds:.3f}" for case, seconds in bound["matmul_cpu_s"].items()))
            for pass_name, seconds in bound["passes_cpu_s"].items():
                print(f"  {pass_name:38s} {seconds:7.3f} CPU-s -> fused / chunked floor >= "
                      f"{bound['lowest_fused_over_floor'][pass_name]:.3f}, / fastest matmul >= "
                      f"{bound['lowest_fused_over_fastest_matmul'][pass_name]:.3f}")
        return 0
    machine_threads = os.cpu_count() or 1
    thread_counts = args.threads or sorted({1, machine_threads})
    jobs = [(s, t, c) for s in shapes for t in thread_counts for c in CASES if c != "dense"]
    # last: the slowest and the least interesting
    jobs += [(s, max(thread_counts), "dense") for s in shapes if s in args.dense_shapes]
    results = {s: {"shape": SHAPES[s], "threads": {str(t): {"cases": {}, "summary": {}} for t in thread_counts}}
               for s in shapes}
    report = {
        "command": command,
        "targets": {f"fused_over_{FLOOR}_cpu": TARGET_TIME_RATIO, "fused_extra_peak_mb": TARGET_EXTRA_MB},
        "memory_method": "extra peak = getrusage ru_maxrss after the first call minus RSS just before it, in a fresh "
                         "subprocess per case with inputs and a warm-up call already resident; peak_exact is false "
                         "if the call stayed under an earlier high-water mark (then it is an upper bound)",
        "time_method": f"process CPU time and wall clock, median of {args.repeats} calls (dense: one call), first call "
                       f"included, at each thread count; targets judged on CPU time against {FLOOR}, the same "
                       f"chunking as the fused kernel with q @ k.T only; {BEST_FLOOR} is q @ k.T at the fastest of "
                       "a few chunkings, the real floor",
        "host": {"cpu": cpu_model(), "torch": torch.__version__,
                 "cpus": machine_threads, "nice": os.nice(0)},
        "shapes": results,
    }
    for shape_name, threads, case in tqdm(jobs, desc="kernel benchmark"):
        load_before = os.getloadavg()
        repeats = 1 if case == "dense" else args.repeats
        done = subprocess.run([sys.executable, __file__, "--worker", shape_name, case, str(threads),
                               "--repeats", str(repeats)], capture_output=True, text=True, check=True)
        entry = json.loads(done.stdout.strip().splitlines()[-1])
        entry["loadavg_before"], entry["loadavg_after"] = load_before, os.getloadavg()
        slot = results[shape_name]["threads"][str(threads)]
        slot["cases"][case] = entry
        slot["summary"] = summarise(slot["cases"])
        write_json(args.out, report)  # after every case, so a long run that is stopped keeps what it measured

    print(f"{'shape':14s} {'threads':>7s} {'case':24s} {'cpu s':>8s} {'wall s':>8s} {'extra MB':>9s}  load")
    for shape_name in shapes:
        for threads, slot in results[shape_name]["threads"].items():
            for case, entry in slot["cases"].items():
                print(f"{shape_name:14s} {threads:>7s} {case:24s} {entry['median_cpu_s']:8.3f} {entry['median_s']:8.3f}"
                      f" {entry['extra_peak_mb']:9.1f}  {entry['loadavg_before'][0]:.1f}->{entry['loadavg_after'][0]:.1f}")
            summary = slot["summary"]
            print(f"{shape_name:14s} {threads:>7s} fused / chunked floor: {summary[f'fused_over_{FLOOR}_cpu']:.3f}x CPU "
                  f"(target {TARGET_TIME_RATIO}), / best-chunked floor: {summary[f'fused_over_{BEST_FLOOR}_cpu']:.3f}x, "
                  f"extra peak {summary['fused_extra_peak_mb']:.1f} MB (target {TARGET_EXTRA_MB})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
