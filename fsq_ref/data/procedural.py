"""Procedural images for tests and quick runs: ten classes of shapes and stripes, drawn in numpy from a seed.

Each class is a foreground mask (`pattern`) at a random position, size, stripe frequency and phase, in a random
foreground and background grey (or colour), plus pixel noise: easy enough to learn in seconds, varied enough that a
tokenizer must use its codebook.
"""

import numpy as np

from fsq_ref.common.errors import InputError

SIZES = {"train": 2048, "test": 512}  # examples per split unless the spec says "procedural:N"


def generate(spec: str, split: str, seed: int, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten classes of simple shapes and stripes with jittered position, size, phase, colour and noise."""
    count = spec.removeprefix("procedural").removeprefix(":")
    if count and not (count.isdigit() and int(count) >= 1):
        raise InputError(f"bad dataset {spec!r}: write 'procedural' or 'procedural:N' with N a positive integer")
    n = int(count) if count else SIZES[split]
    # Seeding with the split's position makes train and test independent draws from the same distribution.
    rng = np.random.default_rng([seed, list(SIZES).index(split)])
    labels = rng.permutation(np.arange(n) % 10).astype(np.int32)  # balanced to within one example per class
    # Coordinates in [-1, 1] so that every pattern is defined independently of the pixel size.
    v, u = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    mask = np.empty((n, size, size), bool)
    for c in range(10):
        (which,) = np.nonzero(labels == c)
        cx, cy = rng.uniform(-0.25, 0.25, (2, len(which), 1, 1))
        r = rng.uniform(0.35, 0.6, (len(which), 1, 1))
        freq, phase = rng.uniform(2, 3.5, (len(which), 1, 1)), rng.uniform(0, 2 * np.pi, (len(which), 1, 1))
        mask[which] = pattern(c, u, v, u - cx, v - cy, r, freq, phase)
    background = rng.uniform(0, 60, (n, 1, 1, channels))
    foreground = rng.uniform(150, 255, (n, 1, 1, channels))
    images = np.where(mask[..., None], foreground, background) + rng.normal(0, 8, (n, size, size, channels))
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels


def pattern(c: int, u: np.ndarray, v: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray,
             freq: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """The foreground mask [B, H, W] of class `c` from the pixel coordinates u, v [H, W], the offsets dx, dy from
    each example's centre [B, H, W], and its size `r`, stripe frequency and phase [B, 1, 1]."""
    width = 0.12  # half the line width: lines about 3 pixels wide at 28x28
    radius, box = np.hypot(dx, dy), np.maximum(abs(dx), abs(dy))

    def stripes(t):  # a square wave along coordinate t
        return np.sin(np.pi * freq * t + phase) > 0

    match c:
        case 0: return radius < r  # filled disc
        case 1: return abs(radius - r) < width  # ring
        case 2: return box < 0.85 * r  # filled square
        case 3: return abs(box - 0.85 * r) < width  # outlined square
        case 4: return stripes(v)  # horizontal stripes
        case 5: return stripes(u)  # vertical stripes
        case 6: return stripes((u + v) / np.sqrt(2))  # diagonal stripes
        case 7: return stripes((u - v) / np.sqrt(2))  # anti-diagonal stripes
        case 8: return (box < r) & (np.minimum(abs(dx), abs(dy)) < width)  # plus sign
        case _: return (dy < r) & (abs(dx) < (dy + r) / 2)  # triangle pointing up


