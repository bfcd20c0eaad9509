"""Measuring: codebook usage, reconstruction and sample quality, the dense tasks' metrics, FLOPs, run folders."""
