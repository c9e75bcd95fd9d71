"""Every family at its checkpoint's real size, through the commands' own library calls, on one device.

No checkpoint can be downloaded on the GPU machine, and weights change neither time nor memory: each
family's modules are built from its checkpoint's module configs (the ones benchmarks/real_memory.py
measures under FakeTensorMode, benchmarks/data/checkpoint_configs.json) with random weights, directly on the
device in the working dtype (parameters diffusers keeps in float32 stay so, as from_pretrained loads
them), and wrapped in the family's adapter with the tokenizers and scheduler of its tiny configuration.

Families, in this order, each until its --budget-s is spent (counted from the start of its set-up; the
cases left are recorded as skipped, with why): CogVideoX-2B, CogVideoX-5B, CogVideoX-5B-I2V, Wan 2.1
1.3B, LTX-Video, Wan 2.2 TI2V-5B, HunyuanVideo (at 61 frames of 544x960, its 540p setting, so that one
forward stays well under 60 s: 32,640 tokens against 118,800 at the native 129x720x1280, 1/13 of the
attention). For each, resident and then under model CPU offload (`--offload`; every model in CPU memory,
moved to the device while it runs):

- track_short, track_long: `difftrack track --tracker difftrack` (8x8 grid on frame 0, the model's own tracking
  layers, step and window) on 49 frames and on --frames (70) frames at the native size; track_paper_short,
  track_paper_long: the same with `--tracker paper` (the paper's procedure at the size the paper tracked at);
- analyze: `difftrack analyze --video` on the native-length video: every layer, two steps (the middle
  of the tracking schedule and the tracking step), noise added;
- generate_cfg, generate_cag: `difftrack generate`, 2 steps at the native size, CFG and CFG + CAG (the
  method's CAG layers), the I2V model from the clip's first frame.

Tracking and analysis read the empty prompt's embedding from the prompt cache, as every run after the
first does, so their text encoders stay off the device; generation has them there. Every case runs
twice. Recorded: the wall and CPU (time.process_time) time of both runs; of the first, the time per
stage (the calls of the transformer, of the VAE's encode and decode and of each text encoder, under
offload with the model's move to the device; CUDA events on a GPU, time.perf_counter on the CPU) and
torch.cuda.max_memory_allocated next to real_memory.py's prediction for the same command
(benchmarks/results/real_memory.json: the native size, batch 1); whether both runs give the same bits;
offloaded against resident, the largest absolute difference of each output (the video's pixels, the
tracks' pixel positions, the analysis' metrics).

Then the gpu_smoke cases that failed on the last GPU run, on the registry's tiny configurations:
analysis of a real video (noise add, clean, invert) for every kind, and CFG generation resident and under
offload (CogVideoX-5B-I2V failed under offload; CogVideoX gave other bits than resident). Last, the
matching kernel at the CogVideoX-2B and 5B analysis shapes (1350 frame-0 points against 13 latent frames
of 30x45 tokens and 226 text tokens, from the real configs): Triton, torch and a bare q @ k.T in the
working dtype, median of --repeats, Triton's argmax agreement with torch.

--tiny runs the same on each family's tiny configuration at 5 and 9 tracked frames and 9 frames of
32x32 (a CPU check of the script). The JSON is rewritten after every family.

    python benchmarks/gpu_native.py --out benchmarks/results/gpu_native.json
    python benchmarks/gpu_native.py --device cpu --dtype float32 --tiny --families cogvideox-2b --out /tmp/g.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
# family -> (its tiny configuration, its entry in real_memory.py, transformer config changes to that entry)
FAMILIES = {
    "cogvideox-2b": ("cogvideox-sincos", "cogvideox-2b", {}),
    "cogvideox-5b": ("cogvideox-rope", "cogvideox-5b", {}),
    # CogVideoX-5b-I2V's transformer/config.json is the 5B's with the image latents as 16 more input
    # channels and learned positions; real_memory.py has no entry of its own, so it predicts with the 5B's.
    "cogvideox-5b-i2v": ("cogvideox-i2v", "cogvideox-5b",
                         {"in_channels": 32, "use_learned_positional_embeddings": True}),
    "wan2.1-t2v-1.3b": ("wan", "wan2.1-t2v-1.3b", {}),
    "ltx-video": ("ltx-video", "ltx-video", {}),
    "wan2.2-ti2v-5b": ("wan2.2", "wan2.2-ti2v-5b", {}),
    "hunyuanvideo": ("hunyuanvideo", "hunyuanvideo", {}),
}
REDUCED_SIZE = {"hunyuanvideo": (61, 544, 960)}
SHORT_FRAMES, LONG_FRAMES, STEPS, TRACK_GRID, ANALYSIS_GRID = 49, 70, 2, 8, 20
TINY = dict(short=5, long=9, size=(9, 32, 32), grid=3)
CFG_SCALE, CAG_SCALE = 6.0, 1.0
PROMPT = "a red disc moves left over the wall"  # words the tiny tokenizers know
KERNEL_MODELS = ("cogvideox-2b", "cogvideox-5b")
GIB = 2 ** 30


class Clock:
    """Marks on the device's timeline (CUDA events: the stream's own time, without host overhead) or the
    host's (time.perf_counter)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.name = "CUDA events" if cuda else "time.perf_counter"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1000 if self.cuda else end - start


class Stages:
    """Time of the calls of the wrapped methods, summed per stage; a call inside another of the same stage
    (a method wrapped twice) is not counted again."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.marks = []
        self.running = set()

    def wrap(self, obj, method: str, stage: str) -> None:
        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            if stage in self.running:
                return inner(*args, **kwargs)
            self.running.add(stage)
            start = self.clock.mark()
            try:
                return inner(*args, **kwargs)
            finally:  # a capture that stops the forward early raises through here
                self.running.discard(stage)
                self.marks.append((stage, start, self.clock.mark()))

        setattr(obj, method, timed)

    def take(self) -> dict:
        self.clock.sync()
        totals = {}
        for stage, start, end in self.marks:
            totals[stage] = totals.get(stage, 0.0) + self.clock.seconds(start, end)
        self.marks = []
        return {stage: round(s, 4) for stage, s in totals.items()}


@dataclass
class Case:
    name: str
    command: str  # the CLI command it stands for
    run: Callable[[], tuple[dict, dict]]  # -> (outputs by name, what to record about the run)
    text: bool = False  # the text encoders take part (tracking and analysis read the cached empty prompt)


def checkpoint_configs() -> dict:
    """The checkpoints' module configs that benchmarks/real_memory.py measures (benchmarks/data)."""
    return json.loads((HERE / "data" / "checkpoint_configs.json").read_text())


def _as_loaded(module, dtype):
    """Inference mode, and in float32 the parameters from_pretrained keeps so (diffusers' always, transformers'
    for float16 only)."""
    import transformers

    keep = getattr(module, "_keep_in_fp32_modules", None) or ()
    if isinstance(module, transformers.PreTrainedModel) and dtype != torch.float16:
        keep = ()
    for name, param in module.named_parameters():
        if any(part in keep for part in name.split(".")):
            param.data = param.data.float()
    return module.eval().requires_grad_(False)


def _built_on(device, dtype, cls, *args, **kwargs):
    """``cls(*args, **kwargs)`` allocated straight on ``device`` in ``dtype``: no float32 copy first, which
    for HunyuanVideo's 13 B parameters would not fit next to its text encoder."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return _as_loaded(cls(*args, **kwargs), dtype)
    finally:
        torch.set_default_dtype(default)


def build_backbone(name: str, kind: str, spec: dict | None, overrides: dict, vae_float32: bool, device, dtype,
                   source: Path):
    """``kind``'s adapter over the tiny configuration's tokenizers and scheduler, with its modules (tiny,
    ``spec`` None) or the real ones of real_memory.py's ``spec``, on ``device``; the VAE in float32 where
    the family's pipeline runs it so."""
    import diffusers
    import transformers

    from difftrack.backbones import tiny_configs

    config = tiny_configs()[kind]
    components = config.build(seed=0)
    vae_dtype = torch.float32 if vae_float32 else dtype
    if spec is None:
        for part, module in components.items():
            if isinstance(module, torch.nn.Module):
                module_dtype = vae_dtype if part == "vae" else dtype
                module.to(device)
                if module.dtype != module_dtype:  # diffusers warns at every cast, even to the same dtype
                    module.to(module_dtype)
                components[part] = _as_loaded(module, module_dtype)
    else:
        torch.manual_seed(0)
        cls, kwargs = spec["transformer"]
        components["transformer"] = _built_on(device, dtype, getattr(diffusers, cls), **kwargs, **overrides)
        cls, kwargs = spec["vae"]
        components["vae"] = _built_on(device, vae_dtype, getattr(diffusers, cls), **kwargs)
        for text_name, (model_cls, config_cls, text_config), _ in spec["text"]:
            text_config = getattr(transformers, config_cls)(**text_config)
            components[text_name] = _built_on(device, dtype, getattr(transformers, model_cls), text_config)
    source.mkdir(parents=True, exist_ok=True)  # an (empty) directory keys the prompt cache
    return config.backbone_class(name, source=str(source), **components)


def _wrap_forwards(bb, stages: Stages) -> None:
    """Time the transformer's and text encoders' forward. Wrapped again once offload is on: accelerate's
    hook then replaces forward around what was there, and the stage should hold the model's move to the
    device, as the VAE's encode and decode do (diffusers' offload hook runs inside them)."""
    stages.wrap(bb.transformer, "forward", "transformer")
    for name in bb.loaded_text_encoders():
        stages.wrap(getattr(bb, name), "forward", name)


# ----- the cases ---------------------------------------------------------------------------------
def track_case(name: str, bb, video: np.ndarray, grid: int, kind: str, **options) -> Case:
    from difftrack.tracker import create_tracker

    height, width = video.shape[1:3]
    ys, xs = np.meshgrid((np.arange(grid) + 0.5) / grid * height, (np.arange(grid) + 0.5) / grid * width, indexing="ij")
    queries = np.stack([np.zeros(grid * grid), xs.ravel(), ys.ravel()], axis=1).astype(np.float32)

    def run():
        tracker = create_tracker(kind, bb, **options)
        tracks, visible = tracker(video, queries)
        windows = {"windows": len(tracker.stats.windows)} if kind == "difftrack" else {"size": list(tracker.config.size)}
        return {"tracks": tracks, "visible": visible}, {
            "tracker": kind, "frames": len(video), "height": height, "width": width, "points": len(queries),
            **windows, "forwards": tracker.meta()["forwards"]}

    return Case(name, "track", run)


def analyze_case(name: str, bb, path: Path, frames: int, grid: int, noise: str, schedule: tuple[int, int]) -> Case:
    from difftrack.analysis import AnalysisConfig, Analyzer, VideoJob

    step, num_steps = schedule
    config = AnalysisConfig(model=bb.name, layers=None, steps=sorted({num_steps // 2, step}), num_steps=num_steps,
                            grid=grid, noise=noise, num_frames=frames)
    job = VideoJob("video", path.stem, path=str(path))

    def run():
        record, _ = Analyzer(bb, config).analyze(job)
        metrics = {metric: np.asarray(values, np.float64) for metric, values in record["metrics"].items()}
        return metrics, {"frames": record["frames"], "latent_frames": record["latent_frames"],
                         "points": record["points"], "layers": bb.num_layers, "steps": config.steps,
                         "num_steps": num_steps, "noise": noise}

    return Case(name, "analyze --video", run)


def generate_case(name: str, bb, size: tuple[int, int, int], mode: str, image: np.ndarray | None) -> Case:
    from difftrack.guidance import GuidanceConfig
    from difftrack.sampling import sample

    frames, height, width = size
    guidance = GuidanceConfig(mode, CFG_SCALE, CAG_SCALE, tuple(bb.default_cag_layers()) if mode == "cag" else ())

    def run():
        video = sample(bb, PROMPT, num_frames=frames, height=height, width=width, num_steps=STEPS, guidance=guidance,
                       output="uint8", progress=False, image=image if bb.takes_image else None)
        return {"video": video}, {"frames": frames, "height": height, "width": width, "steps": STEPS,
                                  "guidance": mode, "cag_layers": list(guidance.cag_layers)}

    return Case(name, "generate", run, text=True)


def _same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a)


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b|; NaN in both is no difference, NaN in one only is an infinite one."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    diff = np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b))
    return float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0


def run_case(case: Case, stages: Stages, device) -> tuple[dict, dict]:
    """Two runs of ``case``: the first's outputs and its record."""
    cuda = device.type == "cuda"
    record, runs = {"command": case.command}, []
    for i in range(2):
        stages.clock.sync()
        if cuda and i == 0:
            torch.cuda.reset_peak_memory_stats(device)
            record["allocated_at_start_gib"] = round(torch.cuda.memory_allocated(device) / GIB, 3)
        wall, cpu = time.perf_counter(), time.process_time()
        outputs, info = case.run()
        stages.clock.sync()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu, outputs))
        if i == 0:
            record.update(info)
            record["stages_s"] = stages.take()
            peak = torch.cuda.max_memory_allocated(device) if cuda else None
            record["max_memory_allocated_gib"] = None if peak is None else round(peak / GIB, 3)
        else:
            stages.take()
    record["wall_s"] = [round(w, 4) for w, _, _ in runs]
    record["cpu_s"] = [round(c, 4) for _, c, _ in runs]
    record["same_bits"] = _same_bits(runs[0][2], runs[1][2])
    return runs[0][2], record


def run_cases(bb, cases: list[Case], offloaded: list[str], device, clock: Clock, budget_s: float, start: float,
              predict: Callable[[str, bool], dict | None] | None = None) -> dict:
    """Every case resident, then those named in ``offloaded`` under model CPU offload, until ``budget_s``
    seconds from ``start`` are spent: {"cases", "skipped"}."""
    stages = Stages(clock)
    stages.wrap(bb.vae, "encode", "vae_encode")
    stages.wrap(bb.vae, "decode", "vae_decode")
    _wrap_forwards(bb, stages)
    out = {"cases": {}, "skipped": {}}
    resident, offloading = {}, False
    plan = [(case, False) for case in cases] + [(case, True) for case in cases if case.name in offloaded]
    for case, offload in plan:
        name = case.name + ("_offload" if offload else "")
        spent = time.perf_counter() - start
        if spent > budget_s:
            out["skipped"][name] = f"budget: {spent:.1f} s of {budget_s:g} s spent"
            continue
        if offload and not offloading:  # for good: the offload hooks stay on the backbone
            bb.enable_model_cpu_offload(device)
            _wrap_forwards(bb, stages)
            offloading = True
        elif not offload:  # as the CLI holds them: on the device for generation only
            for text_encoder in bb.loaded_text_encoders():
                getattr(bb, text_encoder).to(device if case.text else "cpu")
        try:
            outputs, record = run_case(case, stages, device)
        except Exception as exc:  # noqa: BLE001 - one broken case is a finding, not the end of the run
            stages.take()
            outputs, record = None, {"command": case.command, "error": f"{type(exc).__name__}: {exc}"}
        record["offload"] = offload
        out["cases"][name] = record
        if outputs is None:  # out of the except clause, whose traceback held the case's tensors
            release(device)
            continue
        if predict is not None:
            record["predicted_gib"] = predict(case.command, offload)
        if not offload:
            resident[case.name] = outputs
        elif case.name in resident:
            record["max_abs_diff_vs_resident"] = {k: _max_abs_diff(v, resident[case.name][k])
                                                  for k, v in outputs.items()}
    return out


def release(device) -> None:
    """Give what is no longer referenced back to the device (a failed case's activations, a family's modules)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----- families ----------------------------------------------------------------------------------
def _prediction(predictions: dict, model: str, command: str, offload: bool) -> dict:
    entry = predictions["models"][model]
    if command == "generate":
        key = "generate --offload" if offload else "generate"
        gib, what = entry["commands_gib"][key], key
    elif not offload:
        gib, what = entry["commands_gib"]["track / analyze --video"], "track / analyze --video"
    else:  # one model on the device at a time: the larger of the VAE's encode and the capturing forward
        gib = max(entry["stages"][stage]["peak_gib"] for stage in ("vae_encode", "transformer_track"))
        what = "max of the vae_encode and transformer_track stage peaks"
    return {"gib": gib, "real_memory": what, "model": model, "size": entry["size"]}


def _clip(frames: int, height: int, width: int) -> np.ndarray:
    """A generator clip. Real sizes are rendered at a quarter and scaled up: rendering 161 frames at full
    size would take much of a family's budget, and the content changes neither time nor memory."""
    import cv2

    from difftrack.data.synthetic import generate_clip

    if height <= 64:
        return generate_clip(7, num_frames=frames, height=height, width=width).video
    video = generate_clip(7, num_frames=frames, height=height // 4, width=width // 4).video
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in video])


def run_family(family: str, args, device, dtype, configs: dict, predictions: dict, clock: Clock, work: Path) -> dict:
    from difftrack.io import write_video

    start = time.perf_counter()
    kind, model, overrides = FAMILIES[family]
    record = {"budget_s": args.budget_s}
    if args.tiny:
        record["config"] = f"tiny configuration {kind}"
    else:
        record["config"] = f"real_memory.py's {model}" + (f" with transformer {overrides}" if overrides else "")
    cpu = time.process_time()
    try:
        bb = build_backbone(family, kind, None if args.tiny else configs[model], overrides,
                            configs[model].get("vae_float32", False), device, dtype, work / family)
        if args.tiny:
            size, short, grid, grid_analysis = TINY["size"], TINY["short"], TINY["grid"], TINY["grid"]
        else:
            size = REDUCED_SIZE.get(family) or bb.generation_size()
            short, grid, grid_analysis = SHORT_FRAMES, TRACK_GRID, ANALYSIS_GRID
        long = args.frames or (TINY["long"] if args.tiny else LONG_FRAMES)
        video = _clip(max(size[0], short, long), size[1], size[2])
        path = work / f"{family}.mp4"
        write_video(path, video[:size[0]])
        bb.empty_conditioning()  # fills the prompt cache, as a first run of the CLI does
    except Exception as exc:  # noqa: BLE001 - a family that cannot even be built is recorded, the rest run
        return {**record, "error": f"{type(exc).__name__}: {exc}"}
    record["size"] = dict(zip(("frames", "height", "width"), size))
    if family in REDUCED_SIZE and not args.tiny:
        record["size_note"] = ("reduced from the native 129x720x1280 (118,800 tokens a forward against 32,640 here, "
                               "13x the attention) so that one forward stays well under 60 s (stages_s.transformer "
                               "holds the measured time); the predictions are the native size's")
    record["parameters_b"] = {name: round(sum(p.numel() for p in m.parameters()) / 1e9, 4)
                              for name, m in [("transformer", bb.transformer), ("vae", bb.vae)]
                              + [(n, getattr(bb, n)) for n in bb.loaded_text_encoders()]}
    record["setup"] = {"wall_s": round(time.perf_counter() - start, 3), "cpu_s": round(time.process_time() - cpu, 3)}
    paper_size = {"size": size[1:]} if args.tiny else {}
    cases = [track_case("track_short", bb, video[:short], grid, "difftrack"),
             track_case("track_long", bb, video[:long], grid, "difftrack"),
             # tiny configurations record no trained size of their own (LTX's would be its pipeline's 512x704)
             track_case("track_paper_short", bb, video[:short], grid, "paper", **paper_size),
             track_case("track_paper_long", bb, video[:long], grid, "paper", **paper_size),
             analyze_case("analyze", bb, path, size[0], grid_analysis, "add", bb.default_track_step),
             generate_case("generate_cfg", bb, size, "cfg", video[0])]
    refusal = bb.cag_unsupported_reason()
    if refusal is None:
        cases.append(generate_case("generate_cag", bb, size, "cag", video[0]))
    result = run_cases(bb, cases, [c.name for c in cases], device, clock, args.budget_s, start,
                       lambda command, offload: _prediction(predictions, model, command, offload))
    if refusal is not None:
        result["skipped"].update({name: f"CAG refused: {refusal}" for name in ("generate_cag", "generate_cag_offload")})
    return {**record, **result, "wall_s": round(time.perf_counter() - start, 3)}


def run_smoke(kind: str, args, device, dtype, configs: dict, clock: Clock, work: Path) -> dict:
    """The gpu_smoke cases that failed: tiny ``kind``'s real-video analysis in each noise mode, and CFG
    generation resident and offloaded."""
    from difftrack.io import write_video

    start = time.perf_counter()
    vae_float32 = any(configs[model].get("vae_float32", False) for k, model, _ in FAMILIES.values() if k == kind)
    try:
        bb = build_backbone(f"tiny-{kind}", kind, None, {}, vae_float32, device, dtype, work / f"smoke-{kind}")
        video = _clip(*TINY["size"])
        path = work / f"smoke-{kind}.mp4"
        write_video(path, video)
        bb.empty_conditioning()
    except Exception as exc:  # noqa: BLE001 - recorded, the other kinds run
        return {"error": f"{type(exc).__name__}: {exc}"}
    cases = [analyze_case(f"analyze_{noise}", bb, path, TINY["size"][0], TINY["grid"], noise, (2, 3))
             for noise in ("add", "clean", "invert")]
    cases.append(generate_case("generate_cfg", bb, TINY["size"], "cfg", video[0]))
    result = run_cases(bb, cases, ["generate_cfg"], device, clock, args.budget_s, start)
    return {**result, "wall_s": round(time.perf_counter() - start, 3)}


# ----- the matching kernel -----------------------------------------------------------------------
def analysis_shape(transformer_config) -> dict:
    """Every token of frame 0 against every latent frame of the trained video, with the text's keys."""
    c = transformer_config
    grid = (c.sample_height // c.patch_size, c.sample_width // c.patch_size)
    return dict(heads=c.num_attention_heads, dim=c.attention_head_dim, points=grid[0] * grid[1],
                frames=(c.sample_frames - 1) // c.temporal_compression_ratio + 1, grid=grid, text=c.max_text_seq_length)


def kernel_section(args, device, dtype, configs: dict, clock: Clock) -> dict:
    import diffusers

    from difftrack.backbones import tiny_configs
    from difftrack.kernels import match, triton_available

    if device.type != "cuda":
        triton = "skipped: no CUDA device (Triton runs on CUDA tensors)"
    elif not triton_available():
        triton = "skipped: triton does not import here"
    else:
        triton = None
    out = {"dtype": str(dtype).removeprefix("torch."), "repeats": args.repeats, "timer": clock.name}
    for model in KERNEL_MODELS:
        if args.tiny:
            config = tiny_configs()[FAMILIES[model][0]].build(seed=0)["transformer"].config
        else:
            cls, kwargs = configs[model]["transformer"]
            with torch.device("meta"):
                config = getattr(diffusers, cls)(**kwargs).config
        shape = analysis_shape(config)
        gen = torch.Generator().manual_seed(0)
        heads, dim, tokens = shape["heads"], shape["dim"], shape["grid"][0] * shape["grid"][1]
        q, k, text = (torch.randn(heads, n, dim, generator=gen).to(device, dtype)
                      for n in (shape["points"], shape["frames"] * tokens, shape["text"]))
        calls = {"bare_matmul": lambda: q @ k.transpose(1, 2),
                 "torch": lambda: match(q, k, shape["grid"], 0, text_key=text, backend="torch")}
        if triton is None:
            calls["triton"] = lambda: match(q, k, shape["grid"], 0, text_key=text, backend="triton")
        row = {"shape": shape}
        for name, fn in calls.items():
            fn()  # warm-up: Triton compiles, the allocator settles
            times = []
            for _ in range(args.repeats):
                begin = clock.mark()
                fn()
                end = clock.mark()
                clock.sync()
                times.append(clock.seconds(begin, end))
            row[name] = {"median_s": statistics.median(times), "times_s": times}
        if triton is None:
            reference, fused = calls["torch"](), calls["triton"]()
            row["triton_argmax_agreement"] = float((reference.argmax == fused.argmax).float().mean())
            row["triton_over_bare_matmul"] = row["triton"]["median_s"] / row["bare_matmul"]["median_s"]
        else:
            row["triton"] = triton
        row["torch_over_bare_matmul"] = row["torch"]["median_s"] / row["bare_matmul"]["median_s"]
        out[model] = row
    return out


# ----- the run -----------------------------------------------------------------------------------
def _device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    from difftrack.errors import OneLineErrorParser, run_reporting_errors
    from difftrack.options import add_device_arguments, integer, number, output_file

    p = OneLineErrorParser(prog="python benchmarks/gpu_native.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_arguments(p)
    p.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES),
                   help="a subset (run in the order above whatever the order given; default: all)")
    p.add_argument("--budget-s", type=number(min=0, min_inclusive=False), default=75.0,
                   help="seconds per family, set-up included; the cases left when it is spent are skipped (default 75)")
    p.add_argument("--tiny", action="store_true", help="each family's tiny configuration at tiny sizes (a CPU check)")
    p.add_argument("--frames", type=integer(min=2), default=None,
                   help=f"frames of the long tracked video (default {LONG_FRAMES}; {TINY['long']} with --tiny)")
    p.add_argument("--smoke", nargs="*", default=None, metavar="KIND",
                   help="tiny kinds for the failed gpu_smoke cases (default: every kind; none: skip them)")
    p.add_argument("--repeats", type=integer(min=1), default=5, help="timed kernel calls, median reported (default 5)")
    p.add_argument("--out", type=output_file(".json"), default=str(HERE / "results" / "gpu_native.json"))

    def run(args) -> None:
        import diffusers

        from difftrack.errors import UserError
        from difftrack.io import json_safe, write_json
        from difftrack.options import backbone_options
        from difftrack.testing import TINY_KINDS

        unknown = sorted(set(args.smoke or ()) - set(TINY_KINDS))
        if unknown:
            raise UserError(f"--smoke: unknown tiny kind {', '.join(unknown)}; choose from {', '.join(TINY_KINDS)}")
        options = backbone_options(args)
        device, dtype = options["device"], options["dtype"]
        clock = Clock(device.type == "cuda")
        configs = checkpoint_configs()
        predictions = json.loads((HERE / "results" / "real_memory.json").read_text())

        result = {
            "command": "python benchmarks/gpu_native.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "device": _device_name(device), "device_type": device.type, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "dtype": str(dtype).removeprefix("torch."), "tiny": args.tiny,
            "timer": clock.name,
            "memory": "torch.cuda.max_memory_allocated of each case's first run" if clock.cuda else
                      "not measured on the CPU (no CUDA allocator)",
            "predictions": "benchmarks/results/real_memory.json (native size, batch 1, live tensor bytes; "
                           f"{predictions.get('torch')})",
            "families": {}}
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            os.environ["DIFFTRACK_CACHE"] = str(work / "cache")  # the prompt cache of this run only
            for family in [f for f in FAMILIES if f in args.families]:
                result["families"][family] = run_family(family, args, device, dtype, configs, predictions, clock, work)
                release(device)
                write_json(args.out, json_safe(result))  # kept if a later family is cut short
                print(f"{family}: {result['families'][family].get('wall_s', 'failed')} s", flush=True)
            kinds = TINY_KINDS if args.smoke is None else [k for k in TINY_KINDS if k in args.smoke]
            result["gpu_smoke_failures"] = {kind: run_smoke(kind, args, device, dtype, configs, clock, work)
                                            for kind in kinds}
        write_json(args.out, json_safe(result))
        result["kernel"] = kernel_section(args, device, dtype, configs, clock)
        write_json(args.out, json_safe(result))
        print(f"wrote {args.out}")

    # Parsed inside, so that a bad option is one `error:` line and exit 2 like every other error.
    return run_reporting_errors(lambda a: run(p.parse_args(a)), argv, debug=False)


if __name__ == "__main__":
    sys.exit(main())
