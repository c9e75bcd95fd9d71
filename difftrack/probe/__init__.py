"""The seeds' probing framework: features by block and noise level, label propagation, image vs video, pictures."""
