"""Token files: what `fsq encode` writes and every later stage (decode, MaskGIT) reads.

An `.npz` with:
  indices        int32 [N, h, w]   codebook indices, channels-last grid order ([N, h, w, S] for S codebooks or
                                   residual stages per position)
  labels         int32 [N]         class labels, when the data has them (with num_classes)
  codebook_size  int               K; every index is in [0, K)
  levels         int32 [D]         FSQ only
  tokenizer      str               SHA-256 of the tokenizer checkpoint's arrays: which tokenizer made the tokens

The fingerprint lets a reader refuse tokens made by a different tokenizer, which would otherwise decode to noise.
"""

import dataclasses
import io

import numpy as np

from fsq_ref.common.errors import InputError
from fsq_ref.common.files import write_atomic


@dataclasses.dataclass(frozen=True)
class TokenFile:
    indices: np.ndarray  # int32 [N, h, w], or [N, h, w, S] with S indices per position
    codebook_size: int
    tokenizer: str
    labels: np.ndarray | None = None  # int32 [N]
    num_classes: int | None = None
    levels: tuple[int, ...] | None = None
    path: str | None = dataclasses.field(default=None, compare=False)  # where it was read from, for messages

    @property
    def grid(self) -> tuple[int, int]:
        return self.indices.shape[1], self.indices.shape[2]


def save(path, tokens: TokenFile) -> None:
    arrays = {"indices": tokens.indices.astype(np.int32), "codebook_size": np.int64(tokens.codebook_size),
              "tokenizer": np.str_(tokens.tokenizer)}
    if tokens.labels is not None:
        arrays["labels"] = tokens.labels.astype(np.int32)
        arrays["num_classes"] = np.int32(tokens.num_classes)
    if tokens.levels is not None:
        arrays["levels"] = np.array(tokens.levels, np.int32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def load(path) -> TokenFile:
    """Read and validate a token file; raise `InputError` naming what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read token file {path} ({e}): give an .npz written by `fsq encode`") from None
    missing = {"indices", "codebook_size", "tokenizer"} - set(arrays)
    if missing:
        raise InputError(f"{path} lacks {', '.join(sorted(missing))}: give an .npz written by `fsq encode`")
    indices, K = arrays["indices"], int(arrays["codebook_size"])
    if indices.dtype.kind not in "iu" or indices.ndim not in (3, 4):
        raise InputError(f"{path}: indices must be integers [N, h, w] (or [N, h, w, S]); got {indices.dtype} "
                         f"{list(indices.shape)}")
    if indices.size and (indices.min() < 0 or indices.max() >= K):
        raise InputError(f"{path}: token indices span [{indices.min()}, {indices.max()}], outside the codebook "
                         f"[0, {K}): use tokens from the tokenizer that made them")
    labels = arrays.get("labels")
    num_classes = int(arrays["num_classes"]) if "num_classes" in arrays else None
    if labels is not None and (labels.shape != indices.shape[:1] or num_classes is None or labels.min() < 0
                               or labels.max() >= num_classes):
        raise InputError(f"{path}: labels must be [N] integers in [0, num_classes): re-encode with `fsq encode`")
    levels = tuple(int(l) for l in arrays["levels"]) if "levels" in arrays else None
    return TokenFile(indices.astype(np.int32), K, str(arrays["tokenizer"]), labels, num_classes, levels, str(path))


def check_made_by(tokens: TokenFile, fingerprint: str, grid: tuple[int, int], codebook_size: int) -> None:
    """Refuse tokens that the tokenizer with this checkpoint `fingerprint` (grid, codebook) did not make."""
    path = tokens.path or "the token file"
    if tokens.tokenizer != fingerprint:
        raise InputError(f"{path} was encoded by another tokenizer (checkpoint {tokens.tokenizer[:12]}, this one is "
                         f"{fingerprint[:12]}): use the tokenizer --workdir that encoded it")
    if tokens.grid != grid or tokens.codebook_size != codebook_size:
        raise InputError(f"{path} holds {tokens.grid[0]}x{tokens.grid[1]} grids of {tokens.codebook_size} codes, but "
                         f"this model expects {grid[0]}x{grid[1]} grids of {codebook_size}: use matching tokens")
