"""Probing video diffusion features: features by block and noise level, label propagation, image vs video, pictures."""

# The tasks of the image-vs-video studies (:mod:`difftrack.probe.tasks`), named here, where `difftrack probe` reads
# them for its options without importing torch.
TASKS = ("masks", "keypoints", "tracking", "semantic")
