"""Pixel sources: npz members memory-mapped (stored in place, compressed extracted once),
image files decoded per batch with the configured preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nhle_pipeline.pipeline.errors import DataError
from nhle_pipeline.pipeline.image_sources import ArraySource, ImageFileSource, NpzMember, Preprocess


def _images(n=6, h=10, w=12, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def test_stored_npz_member_is_mapped_in_place(tmp_path):
    x = _images()
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(6))
    member = NpzMember(tmp_path / "a.npz", "x", tmp_path / "cache")
    arr = member.array
    assert isinstance(arr, np.memmap) and str(arr.filename) == str((tmp_path / "a.npz").resolve())
    np.testing.assert_array_equal(arr, x)
    assert not (tmp_path / "cache").exists()  # nothing extracted


def test_compressed_npz_member_is_extracted_once_then_mapped(tmp_path):
    x = _images()
    np.savez_compressed(tmp_path / "c.npz", x=x, y=np.arange(6))
    member = NpzMember(tmp_path / "c.npz", "x", tmp_path / "cache")
    np.testing.assert_array_equal(member.array, x)
    extracted = list((tmp_path / "cache" / "npz").glob("*.npy"))
    assert len(extracted) == 1
    mtime = extracted[0].stat().st_mtime_ns
    again = NpzMember(tmp_path / "c.npz", "x", tmp_path / "cache")
    np.testing.assert_array_equal(again.array, x)
    assert extracted[0].stat().st_mtime_ns == mtime  # reused, not rewritten
    extracted[0].write_bytes(b"torn")  # a damaged extraction is redone
    np.testing.assert_array_equal(NpzMember(tmp_path / "c.npz", "x", tmp_path / "cache").array, x)


def test_a_pickled_member_does_not_carry_its_pixels(tmp_path):
    import pickle

    np.savez(tmp_path / "a.npz", x=_images(n=50), y=np.arange(50))
    member = NpzMember(tmp_path / "a.npz", "x", tmp_path)
    _ = member.array
    blob = pickle.dumps(member)
    assert len(blob) < 1000
    np.testing.assert_array_equal(pickle.loads(blob).array, member.array)


def test_array_source_converts_per_batch_with_normalisation():
    x = _images()
    src = ArraySource(x, Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), "t")
    got = src.fetch(np.array([4, 1]))
    assert got.shape == (2, 3, 10, 12) and got.dtype == np.float32
    np.testing.assert_allclose(got[0, 2], (x[4, :, :, 2] / 255.0 - 0.5) / 0.5, atol=1e-6)


def test_resize_and_center_crop_apply_per_batch():
    x = _images(h=40, w=60)
    got = ArraySource(x, Preprocess(resize=20, center_crop=16), "t").fetch(np.arange(3))
    assert got.shape == (3, 3, 16, 16)


def test_image_files_decode_on_demand_and_a_broken_file_is_named(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(_images(n=1, h=30, w=40, seed=i)[0]).save(p, quality=95)
        paths.append(str(p))
    src = ImageFileSource(paths, "RGB", Preprocess(resize=24, center_crop=20))
    got = src.fetch(np.array([2, 0]))
    assert got.shape == (2, 3, 20, 20) and 0.0 <= got.min() and got.max() <= 1.0
    (tmp_path / "1.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DataError, match=r"1\.jpg: cannot decode the image"):
        src.fetch(np.array([1]))


def test_image_files_of_different_sizes_need_a_transform(tmp_path):
    paths = []
    for i, (h, w) in enumerate([(30, 40), (20, 20)]):
        p = tmp_path / f"{i}.png"
        Image.fromarray(_images(n=1, h=h, w=w, seed=i)[0]).save(p)
        paths.append(str(p))
    with pytest.raises(DataError, match="set data.transform"):
        ImageFileSource(paths, "RGB", Preprocess()).fetch(np.arange(2))
    assert ImageFileSource(paths, "RGB", Preprocess(resize=16, center_crop=16)).fetch(np.arange(2)).shape == (2, 3, 16, 16)
