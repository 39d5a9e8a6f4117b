import json
import subprocess
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from p2core.data import load_prepared, save_prepared
from p2core.errors import DataError, DiskFull
from p2core.loader import TrainingBatches
from p2core.prepare import center_crop_resize, digits, prepare_embedded, prepare_folder
from p2core.seeding import generator


def write_image(path, size, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_prepared_round_trip_and_hash(tmp_path, rng):
    images = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    meta = save_prepared(tmp_path, images, {"name": "x", "flip": True}, labels=np.arange(5))
    loaded = load_prepared(tmp_path, verify=True)
    np.testing.assert_array_equal(loaded.images, images)
    np.testing.assert_array_equal(loaded.labels, np.arange(5))
    assert loaded.meta == meta == json.loads((tmp_path / "meta.json").read_text())
    assert meta["count"] == 5 and meta["resolution"] == 4 and meta["channels"] == 3 and loaded.flip
    np.save(tmp_path / "images.npy", images[::-1].copy())
    with pytest.raises(DataError, match="does not match the hash"):
        load_prepared(tmp_path, verify=True)


def test_embedded_digits_geometry_and_no_flip(tmp_path):
    images, labels = digits(16)
    assert images.shape == (1797, 16, 16, 1) and images.dtype == np.uint8 and set(labels) == set(range(10))
    assert images.max() == 255 and images.min() == 0
    meta = prepare_embedded("digits", tmp_path, 8)
    assert meta["flip"] is False and meta["labelled"] and meta["resolution"] == 8
    with pytest.raises(DataError, match="unknown embedded dataset"):
        prepare_embedded("cifar", tmp_path, 8)


def test_center_crop_resize_geometry():
    # 300 x 100 (w x h): left third red, middle green, right blue; a centre crop keeps only green
    array = np.zeros((100, 300, 3), dtype=np.uint8)
    array[:, :100, 0] = 255
    array[:, 100:200, 1] = 255
    array[:, 200:, 2] = 255
    out = center_crop_resize(Image.fromarray(array), 32)
    assert out.shape == (32, 32, 3)
    assert (out[:, 2:-2, 1] > 240).all() and (out[:, 2:-2, [0, 2]] < 15).all()
    # portrait: crop is vertical and centred
    tall = np.zeros((400, 128, 3), dtype=np.uint8)
    tall[136:264] = 255
    out = center_crop_resize(Image.fromarray(tall), 64)
    assert out.shape == (64, 64, 3) and out[2:-2].min() > 240


def test_folder_and_zip_preparation(tmp_path):
    for i, ext in enumerate(("png", "jpg", "jpeg", "webp")):
        write_image(tmp_path / "imgs" / f"sub{i}" / f"im{i}.{ext}", (40 + i, 48), (10 * i, 100, 200))
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    meta = prepare_folder(tmp_path / "imgs", tmp_path / "prepared", 16, "toy", workers=1, progress=False)
    assert meta["count"] == 4 and meta["channels"] == 3 and meta["flip"]
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as archive:
        for path in sorted((tmp_path / "imgs").rglob("*.*")):
            archive.write(path, path.relative_to(tmp_path / "imgs"))
    zipped = prepare_folder(tmp_path / "imgs.zip", tmp_path / "from_zip", 16, "toy", workers=2, progress=False)
    assert zipped["sha256"] == meta["sha256"]
    loaded = load_prepared(tmp_path / "prepared", verify=True)
    assert isinstance(loaded.images, np.memmap) and loaded.images.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(load_prepared(tmp_path / "from_zip").images, loaded.images)


def test_pool_preparation_streams_in_name_order_and_skips(tmp_path):
    """Four worker processes give the serial result byte for byte; skipped images shrink the array file."""
    colours = np.random.default_rng(1).integers(0, 256, (23, 3))
    for i, colour in enumerate(colours):
        write_image(tmp_path / "imgs" / f"{i:03d}.png", (20, 24), tuple(int(c) for c in colour))
    (tmp_path / "imgs" / "005.png").write_bytes(b"broken")
    serial = prepare_folder(tmp_path / "imgs", tmp_path / "a", 8, "x", skip_unreadable=True, workers=1, progress=False)
    pooled = prepare_folder(tmp_path / "imgs", tmp_path / "b", 8, "x", skip_unreadable=True, workers=4, progress=False)
    assert serial["sha256"] == pooled["sha256"] and pooled["count"] == 22 and pooled["skipped"] == 1
    images = load_prepared(tmp_path / "b", verify=True).images
    assert images.shape == (22, 8, 8, 3)
    np.testing.assert_array_equal(images[5, 4, 4], colours[6])  # 005 skipped: 006 moved up
    assert not list((tmp_path / "b").glob(".*tmp*"))


def test_full_disk_is_one_error_and_keeps_the_old_dataset(tmp_path):
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        write_image(tmp_path / "imgs" / "a.png", (40, 40))
        prepare_folder(tmp_path / "imgs", mount / "data", 16, "x", workers=1, progress=False)
        for i in range(30):
            write_image(tmp_path / "imgs" / f"b{i}.png", (400, 400))
        with pytest.raises(DiskFull, match=r"no space left writing .*images.npy"):
            prepare_folder(tmp_path / "imgs", mount / "data", 160, "x", workers=1, progress=False)
        assert not list((mount / "data").glob(".*tmp*"))
        assert load_prepared(mount / "data", verify=True).meta["count"] == 1  # the earlier dataset is untouched
    finally:
        subprocess.run(["umount", str(mount)])


def test_corrupt_empty_missing_and_small_inputs(tmp_path):
    def prepare(name, **options):
        return prepare_folder(tmp_path / name, tmp_path / "out", 16, "x", workers=1, progress=False, **options)

    write_image(tmp_path / "ok" / "a.png", (32, 32))
    (tmp_path / "ok" / "b.png").write_bytes((tmp_path / "ok" / "a.png").read_bytes()[:40])  # truncated
    with pytest.raises(DataError, match="unreadable image .*b.png"):
        prepare("ok")
    assert not (tmp_path / "out" / "meta.json").exists() and not list((tmp_path / "out").glob(".*tmp*"))
    meta = prepare("ok", skip_unreadable=True)
    assert meta["count"] == 1 and meta["skipped"] == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        prepare("empty")
    with pytest.raises(DataError, match="does not exist"):
        prepare("nowhere")
    write_image(tmp_path / "small" / "a.png", (12, 30))
    with pytest.raises(DataError, match="12x30, smaller than the target 16"):
        prepare("small")


def test_training_batches_are_seeded_by_step_and_cover_each_epoch(rng):
    images = rng.integers(0, 256, (10, 2, 2, 1), dtype=np.uint8)
    batches = TrainingBatches(images, batch_size=4, seed=3, flip=False)
    first_epoch = torch.cat([batches.indices(s) for s in range(2)]).tolist() + batches.indices(2).tolist()[:2]
    assert sorted(first_epoch) == list(range(10))  # every image once per epoch
    again = TrainingBatches(images, batch_size=4, seed=3, flip=False)
    assert torch.equal(again.indices(7), batches.indices(7))  # no history: step 7 is step 7
    x = batches.batch(0, generator(3, "step", 0))
    assert x.shape == (4, 1, 2, 2) and x.min() >= -1 and x.max() <= 1


def test_flip_only_when_enabled(rng):
    images = rng.integers(0, 256, (64, 4, 4, 1), dtype=np.uint8)
    plain = TrainingBatches(images, 64, seed=0, flip=False).batch(0, generator(0, "step", 0))
    flipped = TrainingBatches(images, 64, seed=0, flip=True).batch(0, generator(0, "step", 0))
    changed = [not torch.equal(a, b) for a, b in zip(plain, flipped, strict=True)]
    assert 10 < sum(changed) < 54
    for a, b, was_changed in zip(plain, flipped, changed, strict=True):
        assert torch.equal(b, a.flip(-1) if was_changed else a)
