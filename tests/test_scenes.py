"""Tests for fsq_ref.scenes: the labels agree with the camera and the shapes, worked out by hand from the geometry."""

import colorsys
import math

import numpy as np
import pytest

from fsq_ref.common.errors import InputError
from fsq_ref.data import scenes


@pytest.fixture(scope="module")
def generated():
    return scenes.generate(300, seed=0, stream=0, size=32)  # more than one chunk of 256


def test_generate_contract(generated):
    images, depth, semantic, objects = generated
    assert images.shape == (300, 32, 32, 3) and images.dtype == np.uint8
    assert depth.shape == semantic.shape == objects.shape == (300, 32, 32)
    assert depth.dtype == np.float32 and semantic.dtype == objects.dtype == np.int32
    assert set(np.unique(semantic)) == set(range(len(scenes.CLASSES)))
    assert ((objects > 0) == np.isin(semantic, scenes.THINGS)).all()  # objects are exactly the things
    assert objects.max() <= scenes.MAX_OBJECTS


def _background_depth(size):
    """The exact depth [size, size] of the ground and the wall, from the camera geometry by hand: a pixel's ray has
    camera coordinates (u, v, 1), so its depth is the ray parameter where it meets the plane."""
    v = (1 - 2 * (np.arange(size) + 0.5) / size) * math.tan(scenes.FIELD_OF_VIEW / 2)
    sin, cos = math.sin(scenes.CAMERA_PITCH), math.cos(scenes.CAMERA_PITCH)
    downward = sin - v * cos  # how fast the ray descends per metre of depth
    ground = np.where(downward > 0, scenes.CAMERA_HEIGHT / np.where(downward > 0, downward, 1), np.inf)
    wall = scenes.WALL_DISTANCE / (cos + v * sin)
    return np.repeat(np.minimum(ground, wall)[:, None], size, 1), np.repeat((ground < wall)[:, None], size, 1)


def test_scene_depth_is_exact_and_objects_occlude(generated):
    _, depth, semantic, _ = generated
    background_depth, on_ground = _background_depth(32)
    background = semantic <= 1
    expected = np.broadcast_to(background_depth, depth.shape)
    np.testing.assert_allclose(depth[background], expected[background], rtol=1e-6)
    expected_class = np.broadcast_to(np.where(on_ground, 0, 1), background.shape)
    np.testing.assert_array_equal(semantic[background], expected_class[background])  # ground below the wall
    assert (depth[~background] < expected[~background]).all()  # an object is in front of what it hides
    assert np.isfinite(depth).all() and depth.min() > 0 and depth.max() <= scenes.MAX_DEPTH


def test_sphere_pixels_lie_on_a_sphere_resting_on_the_ground(generated):
    # Back-project every pixel of a sphere to 3-D with its depth; a sphere fitted to those points must fit them
    # exactly and touch the ground (centre height == radius). This checks depth, class and object together.
    _, depth, semantic, objects = generated
    c = (2 * (np.arange(32) + 0.5) / 32 - 1) * math.tan(scenes.FIELD_OF_VIEW / 2)
    v, u = np.meshgrid(-c, c, indexing="ij")
    sin, cos = math.sin(scenes.CAMERA_PITCH), math.cos(scenes.CAMERA_PITCH)
    rays = np.stack([u, v * cos - sin, v * sin + cos], -1)  # right * u + up * v + forward, camera pitched down
    fitted = 0
    for n in range(40):
        for i in np.unique(objects[n][semantic[n] == 2]):
            mask = objects[n] == i
            if mask.sum() < 12:
                continue
            points = [0, scenes.CAMERA_HEIGHT, 0] + depth[n][mask][:, None] * rays[mask]
            # |p|^2 = 2 p.centre + (r^2 - |centre|^2) is linear in the centre and the constant.
            solution, *_ = np.linalg.lstsq(np.c_[2 * points, np.ones(len(points))], (points**2).sum(1), rcond=None)
            centre = solution[:3]
            radius = math.sqrt(solution[3] + centre @ centre)
            np.testing.assert_allclose(np.linalg.norm(points - centre, axis=1), radius, atol=1e-4)
            assert abs(centre[1] - radius) < 1e-3 and 0.35 - 1e-3 < radius < 0.8 + 1e-3
            fitted += 1
    assert fitted >= 5


def test_generate_other_sizes():
    images, depth, semantic, _ = scenes.generate(3, seed=0, stream=0, size=12)
    assert images.shape == (3, 12, 12, 3) and depth.shape == (3, 12, 12)
    background = semantic <= 1
    np.testing.assert_allclose(depth[background], np.broadcast_to(_background_depth(12)[0], (3, 12, 12))[background],
                               rtol=1e-6)


def test_generate_rejects_bad_arguments():
    with pytest.raises(InputError, match="n and size must be >= 1"):
        scenes.generate(0, seed=0, stream=0, size=32)


def _nearest_hue(pixels, hues):
    """(index into `hues` nearest the hue of the pixels' mean colour, that circular distance)."""
    hue = colorsys.rgb_to_hsv(*pixels.mean(0) / 255)[0]
    distance = np.abs((hue - hues + 0.5) % 1 - 0.5)
    return int(distance.argmin()), float(distance.min())


def test_the_ground_material_sets_the_ground_and_wall_hues(generated):
    """The mean colour of a scene's ground has one of the four ground hues (within the jitter; shading, the checker
    and the sensor noise scale or average out), and the wall's mean hue is the one paired with that material."""
    images, _, semantic, _ = generated
    materials = []
    for image, classes in zip(images, semantic):
        ground, ground_off = _nearest_hue(image[classes == 0], scenes._GROUND_HUES)
        wall, wall_off = _nearest_hue(image[classes == 1], scenes._WALL_HUES)
        assert ground_off <= scenes._HUE_JITTER + 0.01 and wall_off <= scenes._HUE_JITTER + 0.01
        assert wall == ground
        materials.append(ground)
    assert set(materials) == set(range(len(scenes._GROUND_CELLS)))
