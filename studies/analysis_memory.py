"""Memory and time of the analysis at CogVideoX-2B token geometry, on a tiny-width random model.

    python studies/analysis_memory.py --out results/analysis/memory.json

The transformer has CogVideoX-2B's sequence: 13 latent frames x 30 x 45 tokens (patch 2 on 60 x 90
latents, i.e. 480 x 720 pixels) + 226 text tokens, sin-cos positions; only its width is tiny (2 heads
x 16 by default, 2 layers), so attention over the 17,776-token joint sequence is the real cost.
Latents and text embeddings are fed directly (no VAE, no text encoder). For each requested step it
runs the real-video path of ``difftrack analyze`` (noise added, one forward with early exit,
:class:`~difftrack.analysis.metrics.StepReducer` reducing every captured layer at once) and reports
peak RSS, wall and CPU seconds per (layer, step) (wall time depends on what else runs: the load
average is recorded), seconds of reduction per (layer, step), and the bytes kept per
(layer, step) next to what one dense frame-0 -> all-frames cost map and one dense full-sequence
attention map would take.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

GEOMETRY = {"latent_frames": 13, "latent_height": 60, "latent_width": 90, "patch": 2, "text_tokens": 226,
            "pixel_height": 480, "pixel_width": 720}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build(layers: int, heads: int, head_dim: int):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    from difftrack.backbones.cogvideox import CogVideoXBackbone

    torch.manual_seed(0)
    g = GEOMETRY
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16, out_channels=16, time_embed_dim=16,
        text_embed_dim=32, num_layers=layers, sample_width=g["latent_width"], sample_height=g["latent_height"],
        sample_frames=49, patch_size=g["patch"], temporal_compression_ratio=4, max_text_seq_length=g["text_tokens"],
        use_rotary_positional_embeddings=False).eval().requires_grad_(False)
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing",
                                       rescale_betas_zero_snr=True)
    return CogVideoXBackbone("tiny-width-cogvideox-2b-geometry", transformer, scheduler)


def main(argv=None):
    from difftrack.analysis.metrics import StepReducer
    from difftrack.analysis import AnalysisConfig, Analyzer
    from difftrack.evaluation.queries import token_grid
    from difftrack.io import write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 40], help="step indices of a 50-step schedule")
    p.add_argument("--grid", type=int, default=20, help="query grid side on frame 0 (the authors' fg grid)")
    p.add_argument("--no-features", action="store_true")
    p.add_argument("--out", default="results/analysis/memory.json")
    args = p.parse_args(argv)

    g = GEOMETRY
    rss_start = peak_rss_mib()
    backbone = build(args.layers, args.heads, args.head_dim)
    latents = torch.randn(1, g["latent_frames"], 16, g["latent_height"], g["latent_width"],
                          generator=torch.Generator().manual_seed(1))
    embeds = torch.randn(1, g["text_tokens"], 32, generator=torch.Generator().manual_seed(2))
    geometry = backbone.geometry(latents, g["text_tokens"], frame_size=(g["pixel_height"], g["pixel_width"]))
    queries = token_grid(args.grid, geometry.grid_h, geometry.grid_w)
    config = AnalysisConfig(model=backbone.name, layers=list(range(args.layers)), steps=args.steps, num_steps=50,
                            features=not args.no_features)
    analyzer = Analyzer(backbone, config)
    rss_model = peak_rss_mib()

    reducer = StepReducer(geometry, queries)
    reduce_seconds, reduce_cpu = [], []
    timed = reducer.__call__

    def timed_reduce(desc):
        start, cpu = time.perf_counter(), time.process_time()
        out = timed(desc)
        reduce_seconds.append(time.perf_counter() - start)
        reduce_cpu.append(time.process_time() - cpu)
        return out

    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        analyzer.reduce_steps(latents, (embeds, {}), timed_reduce, progress=True)
    total, total_cpu = time.perf_counter() - start, time.process_time() - cpu
    pairs = len(reducer.reductions)
    kept = [sum(a.nbytes for a in vars(r).values() if a is not None) for r in reducer.reductions.values()]
    n, tokens = len(queries), geometry.video_tokens
    result = {
        "model": {"layers": args.layers, "heads": args.heads, "head_dim": args.head_dim, **g,
                  "video_tokens": tokens, "joint_tokens": geometry.joint_tokens},
        "query_points": n, "steps": args.steps, "layer_step_pairs": pairs, "features": not args.no_features,
        "peak_rss_mib": round(peak_rss_mib(), 1), "rss_after_model_mib": round(rss_model, 1),
        "rss_at_start_mib": round(rss_start, 1),
        "seconds_total": round(total, 3),
        "seconds_per_layer_step": round(total / pairs, 3),
        "seconds_reduction_per_layer_step": round(sum(reduce_seconds) / len(reduce_seconds), 3),
        "seconds_forward_per_step": round((total - sum(reduce_seconds)) / len(args.steps), 3),
        "cpu_seconds_per_layer_step": round(total_cpu / pairs, 3),
        "cpu_seconds_reduction_per_layer_step": round(sum(reduce_cpu) / len(reduce_cpu), 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "kept_bytes_per_layer_step": max(kept),
        "dense_frame0_cost_bytes_per_layer_step": n * tokens * 4,
        "dense_attention_bytes_per_layer_step": args.heads * geometry.joint_tokens ** 2 * 4,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
