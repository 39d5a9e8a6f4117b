import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_spec

from p2core.errors import DataError
from p2core.grids import image_grid
from p2core.sample import draw_shard, generate
from p2core.shards import SampleShards, open_shard, save_shard, shard_origin
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


@pytest.mark.parametrize("sampler", ["ddpm6", "ddim4", "dpmpp2m4"])
def test_shards_of_any_size_and_batch_equal_one_run(checkpoint, sampler):
    """Image i depends only on (checkpoint, sampler, seed, i): shards 0-2, 3, 4-8 drawn with batch sizes 2, 1 and 4
    concatenate to the 9-image run drawn in one batch, bit for bit."""
    whole = generate(checkpoint, sampler, 9, batch_size=9, seed=3, progress=False)
    parts = [
        generate(checkpoint, sampler, num, batch_size=batch, seed=3, start=start, progress=False)
        for start, num, batch in ((0, 3, 2), (3, 1, 1), (4, 5, 4))
    ]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert len({image.tobytes() for image in whole}) == 9  # every image has its own noise


def test_ancestral_respaced_and_full(checkpoint):
    assert generate(checkpoint, "ddpm10", 2, progress=False).shape == (2, 8, 8, 1)
    assert generate(checkpoint, "ddpm5,5", 2, progress=False).shape == (2, 8, 8, 1)


def test_shard_files_are_adm_npz_read_memory_mapped_in_order(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    for name, lo, hi in (("shard1.npz", 3, 7), ("shard0.npz", 0, 3)):
        save_shard(tmp_path / name, images[lo:hi], first_index=lo)
    with np.load(tmp_path / "shard1.npz") as archive:  # what ADM's evaluator reads
        np.testing.assert_array_equal(archive["arr_0"], images[3:])
    mapped, first = open_shard(tmp_path / "shard1.npz")
    assert isinstance(mapped, np.memmap) and first == 3
    shards = SampleShards([tmp_path / "shard1.npz", tmp_path / "shard0.npz"])
    assert len(shards) == 7 and shards.shape == (7, 4, 4, 3)
    np.testing.assert_array_equal(np.stack([shards[i] for i in range(7)]), images)
    np.testing.assert_array_equal(shards.head(5), images[:5])
    save_shard(tmp_path / "late.npz", images[5:], first_index=5)
    with pytest.raises(DataError, match="late.npz starts at image 5, expected 3: shards missing or overlapping"):
        SampleShards([tmp_path / "shard0.npz", tmp_path / "late.npz"])


def test_corrupt_shard_is_one_line_naming_it(tmp_path):
    images = np.zeros((6, 4, 4, 1), dtype=np.uint8)
    save_shard(tmp_path / "shard0.npz", images)
    data = (tmp_path / "shard0.npz").read_bytes()
    (tmp_path / "shard0.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"sample shard .*shard0.npz is unreadable"):
        SampleShards([tmp_path / "shard0.npz"])
    result = subprocess.run(
        [sys.executable, "-m", "p2core", "grid", str(tmp_path / "shard0.npz"), "--out", str(tmp_path / "grid.png")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "shard0.npz is unreadable" in result.stderr


def test_a_sample_set_has_one_precision(tmp_path):
    """Shards drawn in different precisions (a mixed partition resolving ``auto`` per node) are refused by every
    reader, ``p2core evaluate`` included, in one line naming them; one precision is the set's."""
    images = np.zeros((6, 4, 4, 1), dtype=np.uint8)
    for k, precision in enumerate(("fp32", "bf16", "fp32")):
        save_shard(tmp_path / f"shard{k}.npz", images[2 * k : 2 * k + 2], 2 * k, origin={"precision": precision})
    paths = [tmp_path / f"shard{k}.npz" for k in range(3)]
    assert SampleShards(paths[:1]).precision == "fp32"
    with pytest.raises(DataError, match=r"different precisions \(bf16: shard1.npz; fp32: shard0.npz, shard2.npz\)"):
        SampleShards(paths)
    result = subprocess.run(
        [sys.executable, "-m", "p2core", "evaluate", "--samples", *map(str, paths), "--reference", "none.npz"]
        + ["--out", str(tmp_path / "m.json")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "different precisions" in result.stderr


def test_auto_samples_in_the_precision_the_model_was_trained_in(checkpoint, tmp_path, monkeypatch):
    """``auto`` takes the checkpoint's precision (fp32 here), not the node's: every shard of a set agrees."""
    import p2core.device

    monkeypatch.setattr(p2core.device, "native_bf16", lambda device: True)  # a node that would pick bf16
    draw_shard(checkpoint, "ddim2", tmp_path / "auto.npz", 0, 2, precision="auto", progress=False)
    draw_shard(checkpoint, "ddim2", tmp_path / "bf16.npz", 0, 2, precision="bf16", progress=False)
    assert shard_origin(tmp_path / "auto.npz")["precision"] == "fp32"
    assert shard_origin(tmp_path / "bf16.npz")["precision"] == "bf16"


def test_second_writer_of_a_shard_is_refused(checkpoint, tmp_path):
    from p2core.lock import FileLock

    out = tmp_path / "shard0.npz"
    with FileLock(tmp_path / ".shard0.npz.lock"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "p2core",
                "sample",
                "--checkpoint",
                str(checkpoint),
                "--sampler",
                "ddim2",
                "--num",
                "2",
                "--out",
                str(out),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
        )
    assert result.returncode == 2 and "is in use by pid" in result.stderr and not out.exists()


def test_grid():
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    grid = image_grid(images, columns=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    np.testing.assert_array_equal(grid[1:5, 6:10], images[1])
    assert (grid[6:10, 11:15] == 255).all()  # empty sixth cell stays white
