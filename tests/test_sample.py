import numpy as np
import pytest

from conftest import tiny_spec
from p2core.sample import generate, image_grid, load_samples, save_samples
from p2core.train import TrainSpec, train


@pytest.fixture(scope="module")
def checkpoint(digits8, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train(TrainSpec.from_dict(tiny_spec(steps=4)), digits8, out, progress=False)


def test_same_seed_same_images(checkpoint):
    a = generate(checkpoint, "ddim5", 5, batch_size=3, seed=1, progress=False)
    b = generate(checkpoint, "ddim5", 5, batch_size=3, seed=1, progress=False)
    c = generate(checkpoint, "ddim5", 5, batch_size=3, seed=2, progress=False)
    assert a.shape == (5, 8, 8, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_ancestral_respaced_and_full(checkpoint):
    assert generate(checkpoint, "ddpm10", 2, progress=False).shape == (2, 8, 8, 1)
    assert generate(checkpoint, "ddpm5,5", 2, progress=False).shape == (2, 8, 8, 1)


def test_npz_round_trip_and_grid(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    save_samples(tmp_path / "s.npz", images)
    np.testing.assert_array_equal(load_samples(tmp_path / "s.npz"), images)
    grid = image_grid(images, columns=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    np.testing.assert_array_equal(grid[1:5, 6:10], images[1])
    assert (grid[6:10, 11:15] == 255).all()  # empty sixth cell stays white
