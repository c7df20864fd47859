import numpy as np
import pytest

from nhle_pipeline.pipeline.config import DataConfig, Normalize
from nhle_pipeline.pipeline.data import load_dataset, select_forget_indices
from nhle_pipeline.pipeline.errors import DataError


def test_digits_split_shapes_and_range():
    ds = load_dataset(DataConfig())
    assert ds.train.x.shape == (1347, 1, 8, 8)
    assert ds.test.x.shape == (450, 1, 8, 8)
    assert ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int64
    assert ds.train.x.min() == 0.0 and ds.train.x.max() == 1.0
    # stratified: each class's test share equals its share of all 1,797 images (+/- 1 image)
    counts = np.bincount(ds.test.y, minlength=10)
    totals = counts + np.bincount(ds.train.y, minlength=10)
    assert np.all(np.abs(counts - totals * 450 / 1797) <= 1)
    assert ds.input_shape == (1, 8, 8) and ds.num_labels == 10


def _write_npz(folder, x_train, y_train, x_test, y_test):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "train.npz", x=x_train, y=y_train)
    np.savez(folder / "test.npz", x=x_test, y=y_test)
    return folder


def test_npz_gray_and_colour_become_nchw_in_unit_range(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 12, 12), dtype=np.uint8)
    y = np.arange(20, dtype=np.uint8) % 4
    root = _write_npz(tmp_path / "g", gray, y, gray[:8], y[:8])
    ds = load_dataset(DataConfig(dataset="npz", root=str(root)))
    assert ds.train.x.shape == (20, 1, 12, 12)
    np.testing.assert_allclose(ds.train.x[3, 0], gray[3] / 255.0, rtol=1e-6)

    colour = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    root = _write_npz(tmp_path / "c", colour, y[:10], colour[:4], y[:4])
    ds = load_dataset(DataConfig(dataset="npz", root=str(root)))
    assert ds.train.x.shape == (10, 3, 16, 16)
    np.testing.assert_allclose(ds.train.x[2, 1], colour[2, :, :, 1] / 255.0, rtol=1e-6)


def test_normalize_is_per_channel(tmp_path):
    x = np.full((4, 6, 6), 255, dtype=np.uint8)
    root = _write_npz(tmp_path / "n", x, np.zeros(4, np.uint8), x, np.zeros(4, np.uint8))
    ds = load_dataset(DataConfig(dataset="npz", root=str(root), normalize=Normalize(mean=[0.5], std=[0.25])))
    np.testing.assert_allclose(ds.test.x, 2.0)


def test_npz_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(DataConfig(dataset="npz", root=str(tmp_path / "missing")))
    root = tmp_path / "bad"
    root.mkdir()
    np.savez(root / "train.npz", images=np.zeros((2, 4, 4), np.uint8))
    np.savez(root / "test.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"train.npz: expected arrays 'x' and 'y'"):
        load_dataset(DataConfig(dataset="npz", root=str(root)))
    (root / "train.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(DataConfig(dataset="npz", root=str(root)))
    _write_npz(root, np.zeros((2, 4, 4), np.float32), np.zeros(2, np.uint8), np.zeros((2, 4, 4), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(DataError, match="expected uint8 pixels"):
        load_dataset(DataConfig(dataset="npz", root=str(root)))


def test_torchvision_dataset_missing_without_download(tmp_path):
    with pytest.raises(DataError, match="download is off"):
        load_dataset(DataConfig(dataset="fashionmnist", root=str(tmp_path)))


def test_forget_samples_first_in_dataset_order_and_random_seeded():
    y = np.array([0, 1, 0, 2, 0, 1, 0, 0])
    np.testing.assert_array_equal(select_forget_indices(y, [0], 3, "first", 0), [0, 2, 4])
    np.testing.assert_array_equal(select_forget_indices(y, [0, 1], 2, "first", 0), [0, 2, 1, 5])
    a = select_forget_indices(y, [0], 3, "random", 7)
    assert np.array_equal(a, select_forget_indices(y, [0], 3, "random", 7))
    assert set(a) <= {0, 2, 4, 6, 7} and len(set(a)) == 3


def test_too_few_forget_samples_is_an_error():
    with pytest.raises(DataError, match="class 2 has only 1 training samples"):
        select_forget_indices(np.array([0, 2, 0]), [2], 4, "first", 0)


def test_imagefolder_reads_class_folders_in_sorted_order(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "ant"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    ds = load_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path)))
    assert ds.train.x.shape == (6, 3, 10, 10) and ds.test.x.shape == (4, 3, 10, 10)
    assert ds.train.y.tolist() == [0, 0, 0, 1, 1, 1]  # "ant" = 0, "cat" = 1
    first = np.asarray(Image.open(tmp_path / "train" / "ant" / "0.png"))
    np.testing.assert_allclose(ds.train.x[0], first.transpose(2, 0, 1) / 255.0, rtol=1e-6)
    with pytest.raises(DataError, match="no folder"):
        load_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path / "train")))


def test_automatic_batch_size_shrinks_with_the_image_not_below_16():
    from nhle_pipeline.pipeline.data import eval_batch_size

    auto = DataConfig()
    assert eval_batch_size(auto, (1, 8, 8)) == 256
    assert eval_batch_size(auto, (3, 32, 32)) == 256
    assert eval_batch_size(auto, (3, 64, 64)) == 256
    assert eval_batch_size(auto, (3, 96, 96)) == 64
    assert eval_batch_size(auto, (3, 224, 224)) == 16
    assert eval_batch_size(auto, (3, 512, 512)) == 16
    assert eval_batch_size(DataConfig(batch_size=100), (3, 224, 224)) == 100
