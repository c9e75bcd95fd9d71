"""Does cross-frame attention pay? Two diagnostics of an embedded video model against its image twin.

1. Training-loss gap at equal steps: mean training loss of the video model and of its twin over
   blocks of --block steps (from each model's training.json), and their difference (video - twin;
   negative = the video model denoises better, i.e. it profits from seeing other frames).
2. Loss increase when cross-frame attention is removed: the denoising loss (flow target
   noise - x0, the training objective) of the video model on the frozen acceptance clips at noise
   levels s = 0.2, 0.5, 0.8, with its stock attention and with every layer's cross-frame attention
   removed (difftrack.guidance.CrossFrameAttentionRemoval: each video token sees only the text and its
   own frame); the relative increase says how much the model relies on other frames.

    python benchmarks/crossframe_diagnostics.py --video tiny-video --twin tiny-image --out results/embedded
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from embedded_eval import FROZEN_CLIPS, load_clips  # noqa: E402

NOISE_LEVELS = (0.2, 0.5, 0.8)


def loss_blocks(training_json: Path, block: int) -> dict[int, float]:
    history = json.loads(training_json.read_text())["history"]
    losses = np.array([h["loss"] for h in history])
    return {int((i + 1) * block): float(losses[i * block:(i + 1) * block].mean()) for i in range(len(losses) // block)}


@torch.no_grad()
def removal_losses(model: str, clips: dict, seed: int = 0) -> dict:
    from difftrack.backbones import create_backbone
    from difftrack.guidance import CrossFrameAttentionRemoval

    bb = create_backbone(model)
    embeds = bb.encode_prompt([""])
    out = {}
    for s in NOISE_LEVELS:
        stock, removed = [], []
        for c in range(len(clips["seeds"])):
            x0 = bb.encode_video(torch.from_numpy(clips["video"][c]).permute(0, 3, 1, 2).float()[None] / 127.5 - 1)
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + c))
            noisy = (1 - s) * x0 + s * noise
            target = noise - x0
            t = torch.tensor(s * 1000.0)
            stock.append(torch.nn.functional.mse_loss(bb.predict(noisy, t, embeds).float(), target).item())
            with CrossFrameAttentionRemoval(bb, range(bb.num_layers)) as removal:
                removal.state.perturbed_from = 0
                removal.state.tokens_per_frame = removal.tokens_per_frame(noisy)
                removed.append(torch.nn.functional.mse_loss(bb.predict(noisy, t, embeds).float(), target).item())
        out[f"{s}"] = {"stock": float(np.mean(stock)), "cross_frame_removed": float(np.mean(removed)),
                       "relative_increase": float(np.mean(removed) / np.mean(stock) - 1)}
    return out


def main(argv=None) -> int:
    from difftrack.io import atomic_path, write_json
    from difftrack.options import output_dir, positive

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default="tiny-video", help="the video model (registry name or directory)")
    p.add_argument("--twin", default="tiny-image", help="its image twin")
    p.add_argument("--block", type=positive, default=500, help="steps per block of the loss comparison")
    p.add_argument("--clips-file", default=str(FROZEN_CLIPS))
    p.add_argument("--out", type=output_dir, default="results/embedded")
    args = p.parse_args(argv)

    from difftrack.backbones import create_backbone

    sources = {name: Path(create_backbone(name).source) / "training.json" for name in (args.video, args.twin)}
    video_loss, twin_loss = (loss_blocks(sources[n], args.block) for n in (args.video, args.twin))
    gap = {step: video_loss[step] - twin_loss[step] for step in video_loss if step in twin_loss}
    removal = removal_losses(args.video, load_clips(Path(args.clips_file)))
    result = {"command": " ".join(["python", "benchmarks/crossframe_diagnostics.py", *sys.argv[1:]]),
              "video": args.video, "twin": args.twin,
              "training_loss": {"block_steps": args.block, "video": video_loss, "twin": twin_loss,
                                "video_minus_twin": gap},
              "cross_frame_removal": removal}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "crossframe_diagnostics.json", result)
    lines = [f"# Cross-frame diagnostics: {args.video} vs {args.twin}", "", f"    {result['command']}", "",
             f"## Training loss, mean over blocks of {args.block} steps", "",
             "| steps up to | video | twin | video - twin |", "|---:|---:|---:|---:|"]
    lines += [f"| {step} | {video_loss[step]:.4f} | {twin_loss[step]:.4f} | {g:+.4f} |" for step, g in gap.items()]
    lines += ["", "## Denoising loss on the frozen acceptance clips, cross-frame attention removed in every layer", "",
              "| s | stock | removed | increase |", "|---:|---:|---:|---:|"]
    lines += [f"| {s} | {r['stock']:.4f} | {r['cross_frame_removed']:.4f} | {100 * r['relative_increase']:+.1f}% |"
              for s, r in removal.items()]
    with atomic_path(out / "crossframe_diagnostics.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
