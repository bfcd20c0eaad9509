"""The `fsq` command line; `main` is its entry point.

The command needs the `cli` extra (click, optax, pillow, safetensors), which the quantizers do not: without it,
`fsq` says in one line what to install instead of failing on an import.
"""

import sys

# What the `cli` extra installs, by the name Python imports it under.
CLI_MODULES = ("click", "optax", "PIL", "safetensors")


def main() -> None:
    try:
        from fsq_ref.cli.commands import main as command
    except ModuleNotFoundError as e:
        if e.name not in CLI_MODULES:
            raise
        sys.exit(f"fsq: the command line needs the 'cli' extra, and {e.name} is not installed: pip install '.[cli]' "
                 "in the clone (or pip install 'WHEEL[cli]' for a built wheel)")
    command()
