"""Data: image datasets and user files, procedural scenes, the dense tasks' data, token files and the disk cache."""
