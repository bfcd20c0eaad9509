"""The `fsq` command line; `main` is its entry point."""

from fsq_ref.cli.commands import main

__all__ = ["main"]
