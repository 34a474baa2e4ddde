"""Synthetic, deterministic whole-slide images with paired report texts, for tests, demos and training."""
