"""Plumbing every layer uses: the error type for bad input, files written whole, progress display."""
