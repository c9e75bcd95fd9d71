"""Peak memory per stage of every command at the checkpoints' native sizes, with their real module configs.

The real checkpoints do not fit this machine (HunyuanVideo alone is 13 B parameters), so every module
is built from its checkpoint's config under PyTorch's ``FakeTensorMode`` (shapes and dtypes, no
storage, no arithmetic) and each stage runs through difftrack's own adapter calls while a dispatch mode follows
every tensor storage it allocates until it is freed. The figures are the live tensor bytes at the
stage's peak, in the working dtype (bfloat16; Wan's VAE in float32, as its pipeline runs it): what the
CUDA allocator must at least hold. They leave out its caching and fragmentation, cuDNN/cuBLAS workspaces
and the CUDA context (about 0.5 GB), so budget about 10-20 % above them; `benchmarks/gpu_smoke.py`
measures the real allocator on a GPU.

Stages, each at batch 1 and the stock pipeline's default size: ``text`` (each text encoder on a prompt
of its maximum length), ``vae_encode`` (a native-size video, with the VAE's slicing and tiling as
difftrack enables them), ``transformer_track`` (one forward capturing q/k at the method's tracking
layer, stopping after it, as tracking and real-video analysis run it), ``transformer_cfg`` (one forward
of the two-row CFG batch, as `generate` runs it), ``vae_decode``. Per command:

- track / analyze --video: transformer + VAE resident (the empty-prompt embedding is cached; no text
  encoder), plus the larger of the encode and the capturing forward;
- generate: every model resident, plus the largest of text, CFG forward and decode;
- generate --offload: one model on the GPU at a time: the largest stage's own weights plus activations.

    python benchmarks/real_memory.py --out benchmarks/results/real_memory.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import torch

GIB = 2 ** 30
# The checkpoints' module configs (their config.json values that differ from the classes' defaults), the
# adapter that runs them, the text encoders with the token count they are run at, and the native size.
MODELS = json.loads((Path(__file__).parent / "data" / "checkpoint_configs.json").read_text())


def _build(spec: dict, dtype):
    import diffusers
    import transformers

    components = {}
    torch.set_default_dtype(dtype)
    cls, kwargs = spec["transformer"]
    components["transformer"] = getattr(diffusers, cls)(**kwargs).eval()
    if spec.get("vae_float32"):
        torch.set_default_dtype(torch.float32)
    cls, kwargs = spec["vae"]
    components["vae"] = getattr(diffusers, cls)(**kwargs).eval()
    torch.set_default_dtype(dtype)
    for name, (model_cls, config_cls, config), _ in spec["text"]:
        config = getattr(transformers, config_cls)(**config)
        components[name] = getattr(transformers, model_cls)(config).eval()
    return components


def measure(name: str, dtype=torch.bfloat16) -> dict:
    """Every stage of one model, built and run under FakeTensorMode."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from difftrack.capture import DescriptorCapture
    from difftrack.memory import module_bytes, peak_bytes

    spec = MODELS[name]
    module, cls = spec["adapter"].split(":")
    adapter = getattr(importlib.import_module(f"difftrack.backbones.{module}"), cls)
    frames, height, width = spec["size"]
    default_dtype = torch.get_default_dtype()
    start = time.perf_counter()
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            c = _build(spec, dtype)
            text = {n: c.pop(n) for n, _, _ in spec["text"]}
            torch.set_default_dtype(default_dtype)
            bb = adapter(name, c["transformer"], scheduler=None, vae=c["vae"])
            stages = {}
            for text_name, _, tokens in spec["text"]:
                ids = torch.zeros(1, tokens, dtype=torch.long)
                stages[f"text:{text_name}"] = peak_bytes([text[text_name]], lambda m=text[text_name], ids=ids: m(ids))
            video = torch.zeros(1, frames, 3, height, width, dtype=dtype)
            latents = []
            stages["vae_encode"] = peak_bytes([bb.vae], lambda: latents.append(bb.encode_video(video)))
            latents = latents[0].to(dtype)
            embeds, extra = _conditioning(bb, spec, dtype)
            layer = bb.track_layers()
            t = torch.tensor(20.0)

            def track():
                with DescriptorCapture(bb, layer, early_exit=True) as capture:
                    capture.run(bb.predict, latents, t, embeds, **extra)
                    return capture.results

            stages["transformer_track"] = peak_bytes([bb.transformer], track)
            batch = torch.cat([latents, latents])
            extra2 = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in extra.items()}
            stages["transformer_cfg"] = peak_bytes([bb.transformer],
                                                   lambda: bb.predict(batch, t, torch.cat([embeds, embeds]), **extra2))
            stages["vae_decode"] = peak_bytes([bb.vae], lambda: bb.decode_latents(latents))
            weights = {"transformer": module_bytes(bb.transformer), "vae": module_bytes(bb.vae),
                       **{n: module_bytes(m) for n, m in text.items()}}
            parameters = sum(p.numel() for p in bb.transformer.parameters())
    finally:
        torch.set_default_dtype(default_dtype)
    gib = {stage: {"peak_gib": round(peak / GIB, 2), "weights_gib": round(w / GIB, 2),
                   "activations_gib": round((peak - w) / GIB, 2)} for stage, (peak, w) in stages.items()}
    act = {stage: (peak - w) for stage, (peak, w) in stages.items()}
    text_names = [n for n, _, _ in spec["text"]]
    commands = {
        "track / analyze --video": weights["transformer"] + weights["vae"] + max(act["vae_encode"],
                                                                               act["transformer_track"]),
        "generate": sum(weights.values()) + max([act["transformer_cfg"], act["vae_decode"]]
                                                + [act[f"text:{n}"] for n in text_names]),
        "generate --offload": max(peak for stage, (peak, _) in stages.items() if stage != "transformer_track"),
    }
    return {"size": {"frames": frames, "height": height, "width": width}, "dtype": str(dtype).replace("torch.", ""),
            "transformer_parameters_b": round(parameters / 1e9, 2), "track_layers": layer,
            "weights_gib": {k: round(v / GIB, 2) for k, v in weights.items()}, "stages": gib,
            "commands_gib": {k: round(v / GIB, 1) for k, v in commands.items()},
            "seconds": round(time.perf_counter() - start, 1)}


def _conditioning(bb, spec, dtype):
    """Text embeddings and predict's extras of one prompt, shaped as the adapter's encode_conditioning makes them."""
    config = bb.transformer.config
    tokens = spec["text"][0][2]
    width = config.get("text_embed_dim") or config.get("text_dim") or config.get("caption_channels")
    embeds = torch.zeros(1, tokens, width, dtype=dtype)
    extra = {}
    if "pooled_projection_dim" in config:
        extra = {"pooled_projections": torch.zeros(1, config.pooled_projection_dim, dtype=dtype),
                 "prompt_attention_mask": torch.ones(1, tokens, dtype=torch.long)}
    elif "caption_channels" in config:
        extra = {"prompt_attention_mask": torch.ones(1, tokens, dtype=torch.long)}
    return embeds, extra


def main(argv=None) -> int:
    from difftrack.errors import OneLineErrorParser, run_reporting_errors
    from difftrack.options import output_file

    parser = OneLineErrorParser(prog="python benchmarks/real_memory.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--out", type=output_file(".json"),
                        default=str(Path(__file__).parent / "results" / "real_memory.json"))

    def run(args):
        from difftrack.io import json_safe, write_json

        results = {}
        for name in args.models:
            results[name] = measure(name)
            row = results[name]["commands_gib"]
            print(f"{name}: " + ", ".join(f"{k} {v} GiB" for k, v in row.items()), flush=True)
        write_json(args.out, json_safe({
            "method": "FakeTensorMode, every op's output storage followed until freed: live tensor bytes at each stage's peak, batch 1, native size; "
                      "excludes allocator caching, kernel workspaces and the CUDA context",
            "command": "python benchmarks/real_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "torch": torch.__version__, "models": results}))

    return run_reporting_errors(lambda a: run(parser.parse_args(a)), argv, debug=False)


if __name__ == "__main__":
    sys.exit(main())
