"""Does cross-frame attention pay? Two diagnostics of an embedded video model against its image twin
(difftrack.evaluation.crossframe):

1. Training-loss gap at equal steps: mean training loss of the video model and of its twin over
   blocks of --block steps (from each model's training.json), and their difference (video - twin;
   negative = the video model denoises better, i.e. it profits from seeing other frames).
2. Loss increase when cross-frame attention is removed: the denoising loss of the video model on the
   frozen acceptance clips at noise levels s = 0.2, 0.5, 0.8, with its stock attention and with every
   layer's cross-frame attention removed; the relative increase says how much the model relies on other
   frames.

    python studies/crossframe_diagnostics.py --video tiny-video --twin tiny-image --out results/embedded
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from difftrack.data.clips import load_clips
from difftrack.evaluation.crossframe import loss_blocks, removal_losses, training_losses

FROZEN_CLIPS = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "acceptance_clips.npz"


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

    video_loss, twin_loss = (loss_blocks(training_losses(create_backbone(name).source), args.block)
                             for name in (args.video, args.twin))
    gap = {step: video_loss[step] - twin_loss[step] for step in video_loss if step in twin_loss}
    removal = removal_losses(args.video, load_clips(args.clips_file))
    result = {"command": " ".join(["python", "studies/crossframe_diagnostics.py", *sys.argv[1:]]),
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
