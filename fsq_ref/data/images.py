"""Pixels: uint8 images to and from the [-1, 1] floats the networks work in, and batches laid out as PNG grids.

Legend: N images, R rows, H W image size, C channels (1 or 3).
"""

import io
import os

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, UInt8
from PIL import Image

from fsq_ref.common.files import write_atomic


def to_unit(images: UInt8[Array, "B H W C"]) -> Float[Array, "B H W C"]:
    """uint8 pixels -> float32 in [-1, 1], the range the networks work in."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(x: Float[Array, "B H W C"]) -> UInt8[Array, "B H W C"]:
    """[-1, 1] floats -> uint8 pixels, rounded (not truncated) and clipped."""
    return jnp.round(jnp.clip((x + 1.0) * 127.5, 0.0, 255.0)).astype(jnp.uint8)


def grid(rows: list[np.ndarray], pad: int = 2, scale: int = 1) -> np.ndarray:
    """Tile R rows of uint8 images [N, H, W, C] (shorter rows are left blank) into one uint8 [H', W', C] picture.

    Images are separated by `pad` pixels of mid grey and enlarged `scale` times (nearest neighbour), so that 28x28
    digits are large enough to look at.
    """
    h, w, c = rows[0].shape[1:]
    cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, c), 128, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            out[top:top + h, left:left + w] = image
    return out.repeat(scale, axis=0).repeat(scale, axis=1)


def save_png(path: str | os.PathLike, picture: np.ndarray) -> str:
    """Write a uint8 [H, W, C] picture as PNG (atomically) and return the path as a string."""
    image = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())
    return str(path)
