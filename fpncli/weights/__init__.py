"""Weights: the registry (pure data), safe checkpoint reading, the download cache, synthetic checkpoints."""
