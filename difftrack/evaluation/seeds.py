"""Which procedural clips (generator seeds) each use draws from, so that no evaluation scores a clip a model
trained on or a setting was chosen on. Each range starts at its constant and runs as far as its use needs;
the ranges never meet.
"""

# Prompts of `studies/cag.py`: the captions of clips 10,000 + s, apart from every clip anything scores.
PROMPT_SEED_START = 10_000
# Held-out clips of the probe's tasks (`difftrack probe`); its semantic probe trains on clips from 0.
PROBE_EVAL_SEED_START = 100_000
# Held-out clips: the embedded models' frozen acceptance clips, the held-out TAP-Vid-format fixture and the
# analysis of held-out clips all take theirs from here (200,000-200,019 so far).
HELD_OUT_SEED_START = 200_000
# Held-out photo clips (difftrack.data.photo_clips, over the photo corpus's held-out split): the frozen sets of
# benchmarks/data/photo_clips.json take theirs from here (400,000-400,015 so far).
PHOTO_CLIP_SEED_START = 400_000
# The tracker's own settings (occlusion thresholds, motion prior, occluded-state costs) are chosen on these.
CALIBRATION_SEED_START = 500_000
# Training clips of the embedded models: every seed from here up, and no evaluation below it may reach it.
TRAINING_SEED_START = 1_000_000
