"""GPU smoke run: every family through every path on CUDA in bf16, and the Triton kernel against torch.

On a CUDA machine, for each of the registry's tiny configurations (stock classes at tiny width with
the checkpoints' VAE compression, patch size and scheduler, saved as a pipeline directory and loaded
from it): tracking from a later query frame, real-video analysis in each noise mode, generation with
none / cfg / cag guidance (or CAG's refusal), cfg under model CPU offload (same bits as resident) and
probe features, each timed, with the peak CUDA memory
and a repeatability check (same inputs, same bits). Then the matching kernel at the CogVideoX-2B and
5B analysis shapes in bf16: Triton against the torch backend (parity of every output) and against a
bare bf16 ``q @ k.T`` over the same tensors, timed with CUDA events (median of --repeats).

Without CUDA it says so in one line and exits 0 (nothing is measured on a CPU here); --cpu runs the family
cases on the CPU in float32 instead, as a check of this script.

    python benchmarks/gpu_smoke.py --out benchmarks/results/gpu_smoke.json
    python benchmarks/gpu_smoke.py --cpu --kinds cogvideox-rope --out /tmp/gpu_smoke.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FRAMES, SIZE = 9, 32
KERNEL_SHAPES = {"cogvideox-2b": dict(heads=30, dim=64, points=1350, frames=13, grid=(30, 45), text=226),
                 "cogvideox-5b": dict(heads=48, dim=64, points=1350, frames=13, grid=(30, 45), text=226)}


def _timed(fn, device: str):
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    stats = {"seconds": round(time.perf_counter() - start, 3)}
    if cuda:
        stats["peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out, stats


def family_cases(kind: str, root: Path, device: str = "cuda", dtype=torch.bfloat16) -> dict:
    from difftrack.analysis import AnalysisConfig, Analyzer, VideoJob
    from difftrack.backbones import create_backbone, tiny_configs
    from difftrack.data.synthetic import generate_clip
    from difftrack.guidance import GuidanceConfig
    from difftrack.io import write_video
    from difftrack.probe.features import FeatureSpec, extract_features
    from difftrack.sampling import sample
    from difftrack.testing import as_arrays, same_bits, save_pipeline, tiny_components, tiny_pipeline_class
    from difftrack.tracker import DiffTracker

    save_pipeline(tiny_components(kind), tiny_pipeline_class(kind), root / kind)
    bb = create_backbone(str(root / kind), device=device, dtype=dtype)
    clip = generate_clip(7, num_frames=FRAMES, height=SIZE, width=SIZE)
    write_video(root / "clip.mp4", clip.video, 8.0)
    queries = np.array([[3, 8.0, 8.0], [0, 16.0, 16.0]], np.float32)
    image = np.full((SIZE, SIZE, 3), 200, np.uint8) if tiny_configs()[kind].backbone_class.takes_image else None
    cases = {"track": lambda: DiffTracker(bb, num_steps=4, steps=[3])(clip.video, queries)}
    for mode in ("add", "clean", "invert"):
        config = AnalysisConfig(layers=[0, 1], steps=[2], num_steps=3, grid=3, noise=mode, num_frames=FRAMES)
        job = VideoJob("video", "clip", path=str(root / "clip.mp4"))
        cases[f"analyze_{mode}"] = lambda config=config, job=job: Analyzer(bb, config).analyze(job)[0]["metrics"]
    for guidance in ("none", "cfg", "cag"):
        if guidance == "cag" and bb.cag_unsupported_reason():
            continue
        config = GuidanceConfig(guidance, 3.0, 1.0, (0,) if guidance == "cag" else ())
        cases[f"generate_{guidance}"] = lambda config=config: sample(
            bb, "a red disc moves left", num_frames=FRAMES, height=SIZE, width=SIZE, num_steps=2, guidance=config,
            output="uint8", progress=False, image=image)
    offloaded = create_backbone(str(root / kind), device="cpu", dtype=dtype)
    offloaded.enable_model_cpu_offload(device)
    cases["generate_cfg_offload"] = lambda: sample(
        offloaded, "a red disc moves left", num_frames=FRAMES, height=SIZE, width=SIZE, num_steps=2,
        guidance=GuidanceConfig("cfg", 3.0, 1.0, ()), output="uint8", progress=False, image=image)
    spec = FeatureSpec(blocks=(0, 1), kinds=("query", "block"), step=2, num_steps=3)
    cases["probe_features"] = lambda: tuple(v for v in extract_features(bb, clip.video, spec).maps.values())
    results, outputs = {}, {}
    for name, fn in cases.items():
        try:
            outputs[name], stats = _timed(fn, device)
            second, _ = _timed(fn, device)
        except Exception as exc:  # noqa: BLE001 - one broken case is a finding, not the end of the run
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        results[name] = {**stats, "repeatable": same_bits(as_arrays(outputs[name]), as_arrays(second))}
    if "generate_cfg_offload" in outputs and "generate_cfg" in outputs:
        offloaded, resident = (np.asarray(outputs[k], dtype=np.int16) for k in ("generate_cfg_offload", "generate_cfg"))
        difference = int(np.abs(offloaded - resident).max())
        results["generate_cfg_offload"].update(same_as_resident=difference == 0, max_abs_diff_vs_resident=difference)
    return results


def kernel_cases(repeats: int) -> dict:
    from difftrack.kernels import match, triton_available

    out = {"triton_available": triton_available()}
    for shape_name, shape in KERNEL_SHAPES.items():
        gen = torch.Generator(device="cuda").manual_seed(0)
        tokens = shape["grid"][0] * shape["grid"][1]

        def randn(*size):
            return torch.randn(*size, generator=gen, device="cuda").to(torch.bfloat16)

        q, k = randn(shape["heads"], shape["points"], shape["dim"]), randn(shape["heads"], shape["frames"] * tokens, shape["dim"])
        text = randn(shape["heads"], shape["text"], shape["dim"])
        calls = {"bare_matmul_bf16": lambda: q @ k.transpose(1, 2),
                 "torch": lambda: match(q, k, shape["grid"], 0, text_key=text, backend="torch")}
        if out["triton_available"]:
            calls["triton"] = lambda: match(q, k, shape["grid"], 0, text_key=text, backend="triton")
        row = {}
        for name, fn in calls.items():
            fn()
            times = []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            row[name] = {"median_s": statistics.median(times), "times_s": times}
        if "triton" in calls:
            a, b = calls["torch"](), calls["triton"]()
            row["triton_vs_torch_max_abs"] = {f: float((getattr(a, f).float() - getattr(b, f).float()).abs().max())
                                              for f in ("peak", "refined", "mass_frames", "mass_text", "max_frames")}
            row["triton_vs_torch_argmax_agreement"] = float((a.argmax == b.argmax).float().mean())
            row["triton_over_bare_matmul"] = row["triton"]["median_s"] / row["bare_matmul_bf16"]["median_s"]
        out[shape_name] = row
    return out


def main(argv=None) -> int:
    from difftrack.errors import OneLineErrorParser, run_reporting_errors
    from difftrack.io import json_safe, write_json
    from difftrack.options import integer, output_file
    from difftrack.testing import TINY_KINDS

    p = OneLineErrorParser(prog="python benchmarks/gpu_smoke.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=output_file(".json"), default=str(Path(__file__).parent / "results" / "gpu_smoke.json"))
    p.add_argument("--repeats", type=integer(min=1), default=5)
    p.add_argument("--kinds", nargs="+", choices=TINY_KINDS, default=list(TINY_KINDS),
                   help="the tiny configurations to run (default: every one)")
    p.add_argument("--cpu", action="store_true",
                   help="run the family cases on the CPU in float32, as a check of this script (nothing is timed "
                        "that matters, and the kernel cases need CUDA)")

    def run(args) -> None:
        if not args.cpu and not torch.cuda.is_available():
            print("gpu_smoke.py: no CUDA device here; it measures nothing on a CPU (run it on a GPU machine)")
            return
        device, dtype = ("cpu", torch.float32) if args.cpu else ("cuda", torch.bfloat16)
        result = {"device": "cpu" if args.cpu else torch.cuda.get_device_name(), "torch": torch.__version__,
                  "dtype": str(dtype).removeprefix("torch."),
                  "command": "python benchmarks/gpu_smoke.py " + " ".join(argv if argv is not None else sys.argv[1:])}
        result["families"] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for kind in args.kinds:
                try:
                    result["families"][kind] = family_cases(kind, Path(tmp), device, dtype)
                except Exception as exc:  # noqa: BLE001 - a family that cannot even load is recorded, the rest run
                    result["families"][kind] = {"error": f"{type(exc).__name__}: {exc}"}
        write_json(args.out, json_safe(result))  # kept if the kernel timing is cut short
        if not args.cpu:
            result["kernel"] = kernel_cases(args.repeats)
            write_json(args.out, json_safe(result))
        print(f"wrote {args.out}")

    # Parsed inside, so that a bad option is one `error:` line and exit 2 like every other error.
    return run_reporting_errors(lambda a: run(p.parse_args(a)), argv, debug=False)


if __name__ == "__main__":
    sys.exit(main())
