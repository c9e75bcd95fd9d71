"""Probing video diffusion features: features by block and noise level, label propagation, image vs video, pictures."""
