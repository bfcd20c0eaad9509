"""The disk cache: what is slow to make and fixed by its inputs is made once per machine and read back after that.

It holds the feature classifier (`features`), the generated scenes (`dense`, about 15 s for the 12288 default scenes
on a 2-core CPU) and a trained oracle's guiding codes of a dataset (`uvim_train`, one pass of the oracle's encoder):
without it, each of the fifteen `fsq` processes of a UViM table made them again. The folder is $FSQ_CACHE_DIR, else
~/.cache/fsq-ref; removing it only costs the time to make its entries again.

An entry of arrays (`arrays`) is named by a digest of everything it depends on, the source code of this package
included, so an entry is never stale: a changed generator or a retrained oracle gets a new name. The default scenes at
32 px take 190 MB (train and test); entries of an older code stay until the folder is removed.
"""

import functools
import hashlib
import io
import os
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from fsq_ref.common.errors import InputError
from fsq_ref.common.files import write_atomic

_PACKAGE = Path(__file__).parent


def folder() -> Path:
    return Path(os.environ.get("FSQ_CACHE_DIR") or Path.home() / ".cache" / "fsq-ref")


def make_folder(path: Path) -> None:
    """Creates the folder of cache entry `path`, or raises an InputError that says how to fix it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the cache folder {path.parent} ({e}): set FSQ_CACHE_DIR to a writable "
                         "folder") from None


def digest(*parts: str | bytes | np.ndarray | None) -> str:
    """A short hex digest of `parts` (arrays by dtype, shape and bytes; None as itself)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part)
            h.update(f"{part.dtype.str}{part.shape}".encode())
            h.update(memoryview(part).cast("B"))
        else:
            h.update(repr(part).encode() if not isinstance(part, bytes) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


@functools.cache
def _code_digest() -> str:
    return digest(*(p.read_bytes() for p in sorted(_PACKAGE.glob("*.py"))))


def arrays(name: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`make()`'s arrays, read from the cache entry `name` (plus this code's digest) when there is one, else made
    and written there (atomically: a process that reads it meanwhile sees no entry or a whole one). `name` must
    already tell apart every input that changes the arrays; a damaged entry is made again, and one that cannot be
    written is only warned about on stderr."""
    path = folder() / f"{name}-{_code_digest()}.npz"
    try:
        with np.load(path) as entry:
            return {key: entry[key] for key in entry.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # none yet, or a damaged one: make it
        pass
    made = make()
    buffer = io.BytesIO()
    np.savez(buffer, **made)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buffer.getvalue())
    except OSError as e:  # the arrays are made: a cache that cannot keep them only costs the time to make them again
        print(f"warning: cannot write the cache entry {path} ({e}); it will be made again next time: set "
              "FSQ_CACHE_DIR to a writable folder", file=sys.stderr, flush=True)
    return made
