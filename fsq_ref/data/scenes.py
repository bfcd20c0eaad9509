"""Procedural 3-D scenes for UViM's dense prediction tasks (FSQ paper Section 4, Table 2), ray-cast in numpy.

Each scene is a picture with exact labels for all three tasks: depth, panoptic segmentation, and colour (the image
itself, the target of colorization). Image, depth, classes and objects come from the same pixel rays, so no label is
ever estimated. `dense.load("scenes[:N]", ...)` wraps `generate` into a `dense.DenseData`.

Geometry, in metres: the world has y up and z forward along the ground, which is the plane y = 0; a vertical wall at
z = WALL_DISTANCE closes the view, so every ray hits something. A pinhole camera at height CAMERA_HEIGHT looks along
+z, pitched down by CAMERA_PITCH, with a square field of view FIELD_OF_VIEW. Each scene holds 1 to MAX_OBJECTS
objects, spheres, boxes (turned about the vertical) and upright cylinders, resting on the ground 2 to 6 m ahead and
not touching one another. One directional light per scene, from above and behind the camera, shades every surface
(Lambertian, plus ambient); the ground is a checkerboard, the wall a vertical colour gradient, and each image gets a
little sensor noise.

Classes (CLASSES): 0 ground and 1 wall are stuff; 2 sphere, 3 box and 4 cylinder are things (THINGS). Colour hints
at the class (spheres reddish, boxes bluish, cylinders greenish) without fixing it. Likewise the ground is one of
four materials, each with its own checker size and hue, and the wall's hue goes with the ground's: the grey picture
tells the colour of most pixels to within a small jitter, as texture and context do in a photograph (grass is green),
so colorization has something to learn. Only brightness and saturation are drawn freely.

Depth is the distance along the camera's optical axis (the z of camera coordinates), not the length of the ray; it
is finite, > 0 and at most 11.03 m (where the wall meets the ground), below MAX_DEPTH.

Legend: N scenes, H W image height and width (square, `size`), P = H*W pixels, M = MAX_OBJECTS object slots per
scene, m scenes in one intersection call.
"""

from __future__ import annotations

import math

import numpy as np

from fsq_ref.common.errors import InputError

CAMERA_HEIGHT = 1.2
CAMERA_PITCH = math.radians(12)  # looking down, so that the ground fills the lower half of the picture
FIELD_OF_VIEW = math.radians(60)  # horizontal and vertical (the images are square)
WALL_DISTANCE = 11.0  # a vertical back wall at z = 11 ends every ray, so every depth is finite
MAX_DEPTH = 12.0  # the farthest visible point (where the wall meets the ground) is at 11.03 m
CLASSES = ("ground", "wall", "sphere", "box", "cylinder")
THINGS = (2, 3, 4)  # ground and wall are stuff
MAX_OBJECTS = 4
_CHUNK = 256  # scenes ray-cast at once: arrays of 256 x P stay in cache, and "scenes:N" is a prefix of "scenes:2N"
_HUES = np.array([0.0, 0.6, 0.3])  # sphere red, box blue, cylinder green: colour is partly predictable from shape
_GROUND_CELLS = np.array([0.4, 0.6, 0.8, 1.0])  # checker square side in metres, one per ground material
_GROUND_HUES = np.array([0.08, 0.3, 0.55, 0.8])  # ochre, green, blue, violet
_WALL_HUES = np.array([0.6, 0.12, 0.95, 0.4])  # the wall of a room with ground material i has hue _WALL_HUES[i]
_HUE_JITTER = 0.04
_AMBIENT = 0.35


def generate(n: int, *, seed: int, stream: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draws and ray-casts n scenes.

    Scene i depends only on (seed, stream, i, size): the first n scenes of a longer run are the same scenes, and each
    stream is an independent sequence (`dense.load` uses stream 0 for the train split and 1 for the test split).

    Args:
      n: number of scenes, >= 1.
      seed, stream: non-negative integers that pick the random sequence.
      size: side of the square images, >= 1.

    Returns:
      images: uint8 [N, H, W, 3] RGB.
      depth: float32 [N, H, W], metres along the optical axis.
      semantic: int32 [N, H, W], indices into CLASSES.
      objects: int32 [N, H, W], 0 on the ground and the wall, k + 1 on object slot k. Slots are in drawing order, not
        image order: `dense.canonical_instances` turns them into the instance ids of `dense`.
    """
    if n < 1 or size < 1 or seed < 0 or stream < 0:
        raise InputError(f"n and size must be >= 1, seed and stream >= 0; got n={n}, size={size}, seed={seed}, "
                         f"stream={stream}")
    rays = _rays(size)
    # Seeding each chunk by (seed, stream, chunk) keeps streams disjoint and makes every scene independent of n.
    chunks = [_scene_chunk(np.random.default_rng([seed, stream, c]), rays) for c in range(-(-n // _CHUNK))]
    images, depth, semantic, objects = (np.concatenate(parts)[:n] for parts in zip(*chunks))
    grid = (n, size, size)
    return images.reshape(*grid, 3), depth.reshape(grid), semantic.reshape(grid), objects.reshape(grid)


def _rays(size: int) -> np.ndarray:
    """World directions [P, 3] of the pinhole camera's pixel rays, scaled to a forward component of 1 in camera
    coordinates, so that the ray parameter t of a hit point is its depth (distance along the optical axis)."""
    c = ((np.arange(size) + 0.5) / size * 2 - 1) * math.tan(FIELD_OF_VIEW / 2)
    v, u = np.meshgrid(-c, c, indexing="ij")  # v up, u right; row 0 is the top of the image
    sin, cos = math.sin(CAMERA_PITCH), math.cos(CAMERA_PITCH)
    return np.stack([u, v * cos - sin, v * sin + cos], -1).reshape(-1, 3)  # right*u + up*v + forward


def _scene_chunk(rng: np.random.Generator, d: np.ndarray) -> tuple[np.ndarray, ...]:
    """Draws and ray-casts _CHUNK scenes seen along the rays `d` [P, 3]: uint8 RGB [n, P, 3], float32 depth [n, P],
    int32 semantic classes and raw instance ids (object slot + 1) [n, P]."""
    n, M = _CHUNK, MAX_OBJECTS
    shape = rng.integers(0, 3, (n, M))
    u = rng.uniform(0, 1, (n, M, 3))
    # Half extents (x, y, z) in metres: sphere radius 0.35-0.8; box 0.6-1.4 wide and deep, 0.5-1.6 tall; cylinder
    # radius 0.25-0.6, 0.6-1.8 tall. Big enough that most objects span several pixels at 32x32.
    sphere = np.repeat(0.35 + 0.45 * u[..., :1], 3, -1)
    box = np.stack([0.3 + 0.4 * u[..., 0], 0.25 + 0.55 * u[..., 2], 0.3 + 0.4 * u[..., 1]], -1)
    cylinder = np.stack([0.25 + 0.35 * u[..., 0], 0.3 + 0.6 * u[..., 2], 0.25 + 0.35 * u[..., 0]], -1)
    half = np.choose(shape[..., None], [sphere, box, cylinder])
    radius = np.where(shape == 1, np.hypot(half[..., 0], half[..., 2]), half[..., 0])  # of the footprint
    yaw = rng.uniform(0, np.pi / 2, (n, M))
    albedo = _hsv_to_rgb((_HUES[shape] + rng.uniform(-0.06, 0.06, (n, M))) % 1, rng.uniform(0.5, 0.9, (n, M)),
                         rng.uniform(0.6, 0.95, (n, M)))
    exists = np.arange(M) < rng.integers(1, M + 1, (n, 1))
    footprint = np.zeros((n, M, 2))  # centre (x, z) on the ground
    for k in range(M):  # rejection sampling, vectorised over scenes: a scene with no room keeps fewer objects
        placed = np.zeros(n, bool)
        for _ in range(8):
            z = rng.uniform(2.0, 6.0, n)
            candidate = np.stack([rng.uniform(-0.9, 0.9, n) * z * math.tan(FIELD_OF_VIEW / 2), z], -1)
            gap = np.linalg.norm(candidate[:, None] - footprint[:, :k], axis=-1) - radius[:, :k] - radius[:, k:k + 1]
            take = ~placed & ((gap > 0.1) | ~exists[:, :k]).all(1)
            footprint[take, k], placed = candidate[take], placed | take
        exists[:, k] &= placed
    light = rng.normal(size=(n, 3)) * [0.5, 0.2, 0.3] + [0.0, 1.0, -0.7]  # from above, behind the camera
    light /= np.linalg.norm(light, axis=1, keepdims=True)

    # Background: the ground where a downward ray meets it before the wall, else the wall.
    origin = np.array([0.0, CAMERA_HEIGHT, 0.0])
    t_wall = WALL_DISTANCE / d[:, 2]
    with np.errstate(divide="ignore"):
        t_ground = np.where(d[:, 1] < 0, -CAMERA_HEIGHT / d[:, 1], np.inf)
    on_ground = t_ground < t_wall
    depth = np.broadcast_to(np.where(on_ground, t_ground, t_wall), (n, len(d))).copy()
    hit = origin + depth[0, :, None] * d
    material = (rng.uniform(0, 1, n) * len(_GROUND_CELLS)).astype(int)
    cell = _GROUND_CELLS[material][:, None]
    checker = (np.floor(hit[:, 0] / cell) + np.floor(hit[:, 2] / cell)) % 2  # [n, P]
    ground = _hsv_to_rgb(_jittered(_GROUND_HUES[material], rng), rng.uniform(0.1, 0.4, n), rng.uniform(0.35, 0.6, n))
    low, high = (_hsv_to_rgb(_jittered(_WALL_HUES[material], rng), rng.uniform(0.1, 0.3, n),
                             rng.uniform(0.7, 0.95, n)) for _ in range(2))
    height = np.clip(hit[:, 1] / 5, 0, 1)[None, :, None]  # the wall's colour fades from `low` to `high` upwards
    background = np.where(on_ground[None, :, None],
                          ground[:, None] * (0.85 + 0.3 * checker[..., None]) * _shade(light[:, 1])[:, None, None],
                          (low[:, None] * (1 - height) + high[:, None] * height) * _shade(-light[:, 2])[:, None, None])

    # Objects, one slot and one shape at a time so that each intersection runs only on the scenes that have it. The
    # loop keeps only depth, the nearest slot and its lighting; classes and colours are looked up once at the end.
    slot, lit = np.zeros(depth.shape, np.int32), np.zeros(depth.shape)  # slot: 0 background, k + 1 object k
    intersect = (_sphere, _box, _cylinder)
    for k in range(M):
        for s in range(3):
            (rows,) = np.nonzero(exists[:, k] & (shape[:, k] == s))
            if len(rows) == 0:
                continue
            x, z = footprint[rows, k].T
            t, cos_light = intersect[s](origin, d, x, z, half[rows, k], yaw[rows, k], light[rows])
            current = depth[rows]
            nearer = t < current
            depth[rows] = np.where(nearer, t, current)
            slot[rows] = np.where(nearer, k + 1, slot[rows])
            lit[rows] = np.where(nearer, cos_light, lit[rows])
    scene, obj = np.arange(n)[:, None], np.maximum(slot - 1, 0)
    semantic = np.where(slot > 0, 2 + shape[scene, obj], np.where(on_ground, 0, 1)).astype(np.int32)
    colour = np.where((slot > 0)[..., None], albedo[scene, obj] * _shade(lit)[..., None], background)
    noise = rng.standard_normal(colour.shape, np.float32) * 2  # a little sensor noise, in 8-bit levels
    images = np.clip(np.rint(colour * 255 + noise), 0, 255).astype(np.uint8)
    return images, depth.astype(np.float32), semantic, slot


def _jittered(hue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`hue` moved by up to _HUE_JITTER either way, wrapped into [0, 1)."""
    return (hue + rng.uniform(-_HUE_JITTER, _HUE_JITTER, hue.shape)) % 1


def _shade(cos_light: np.ndarray) -> np.ndarray:
    """Lambertian brightness for the cosine between surface normal and light direction."""
    return _AMBIENT + (1 - _AMBIENT) * np.maximum(cos_light, 0)


def _sphere(o, d, x, z, half, yaw, light):
    """Ray parameter t [m, P] (inf on a miss) and cos(normal, light) [m, P] for m spheres resting on the ground at
    (x, 0, z) [m], seen from `o` [3] along `d` [P, 3]; `half` [m, 3] are half extents, `light` [m, 3] unit vectors.
    `yaw` [m] turns boxes only; the round shapes take it so that all three intersections share one signature."""
    r = half[:, 0]
    centre = np.stack([x, r, z], -1)
    oc = o - centre
    b, a, c = oc @ d.T, (d * d).sum(1), (oc * oc).sum(1) - r**2
    disc = b**2 - a * c[:, None]
    t = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
    point = o + np.where(np.isfinite(t), t, 0)[..., None] * d
    return t, np.einsum("mpk,mk->mp", point - centre[:, None], light) / r[:, None]


def _box(o, d, x, z, half, yaw, light):
    """Like `_sphere`, for boxes turned by `yaw` about the vertical axis: the slab method in the box's own frame."""
    cos, sin = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    rel_x, rel_z = (o[0] - x)[:, None], (o[2] - z)[:, None]
    local_o = (cos * rel_x + sin * rel_z, o[1] - half[:, 1:2], -sin * rel_x + cos * rel_z)
    local_d = (cos * d[:, 0] + sin * d[:, 2], np.broadcast_to(d[:, 1], cos.shape[:1] + d[:, 1].shape),
               -sin * d[:, 0] + cos * d[:, 2])
    with np.errstate(divide="ignore", invalid="ignore"):
        ends = [((-half[:, i:i + 1] - local_o[i]) / local_d[i], (half[:, i:i + 1] - local_o[i]) / local_d[i])
                for i in range(3)]
    near = np.stack([np.minimum(*e) for e in ends])  # [3, m, P]
    t_near, t_far = near.max(0), np.stack([np.maximum(*e) for e in ends]).min(0)
    t = np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)
    axis = near.argmax(0)  # the face entered last is the face hit
    normal = -np.sign(np.stack(local_d)) * (axis == np.arange(3)[:, None, None])  # [3, m, P], box frame
    world = (cos * normal[0] - sin * normal[2], normal[1], sin * normal[0] + cos * normal[2])
    return t, sum(w * light[:, i:i + 1] for i, w in enumerate(world))


def _cylinder(o, d, x, z, half, yaw, light):
    """Like `_sphere`, for upright cylinders: the side (a circle in x, z) or the flat top."""
    r, h = half[:, :1], 2 * half[:, 1:2]
    ox, oz = (o[0] - x)[:, None], (o[2] - z)[:, None]
    a, b, c = d[:, 0]**2 + d[:, 2]**2, ox * d[:, 0] + oz * d[:, 2], ox**2 + oz**2 - r**2
    disc = b**2 - a * c
    t_side = (-b - np.sqrt(np.maximum(disc, 0))) / a
    side = (disc > 0) & (np.abs(o[1] + t_side * d[:, 1] - h / 2) <= h / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_top = (h - o[1]) / d[:, 1]
    top = (t_top > 0) & ((ox + t_top * d[:, 0])**2 + (oz + t_top * d[:, 2])**2 <= r**2)
    t_side, t_top = np.where(side, t_side, np.inf), np.where(top, t_top, np.inf)
    t = np.minimum(t_side, t_top)
    ts = np.where(side, t_side, 0)
    lit_side = ((ox + ts * d[:, 0]) * light[:, :1] + (oz + ts * d[:, 2]) * light[:, 2:]) / r
    return t, np.where(t_top < t_side, light[:, 1:2], lit_side)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Colours [..., 3] in [0, 1] from hue, saturation and value in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6) % 6
    return v[..., None] * (1 - s[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1))
