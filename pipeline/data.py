"""Datasets as in-memory arrays, and the forget-sample selection.

Every loader returns images as ``(N, C, H, W)`` float32 in [0, 1] (uint8 / 255;
grayscale gets C = 1) and labels as int64 ``(N,)``. Normalisation happens only
when ``data.normalize`` is set, so a model trained on [0, 1] inputs works with
no extra fields. Nothing is downloaded unless ``data.download: true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nhle_pipeline.pipeline.config import DataConfig
from nhle_pipeline.pipeline.errors import DataError

# scikit-learn's digits have no official split: a fixed stratified split
# (450 test images, random_state 0, independent of the run's seed) keeps the
# split identical across runs and machines. The bundled order's last images
# come from other writers, so a plain head/tail split would test writer shift.
DIGITS_TEST_SIZE = 450
DIGITS_SPLIT_STATE = 0
DIGITS_MAX_VALUE = 16.0  # digits pixels are integers 0..16


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # (N, C, H, W) float32
    y: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    @property
    def num_labels(self) -> int:
        return int(max(self.train.y.max(), self.test.y.max())) + 1


def _to_nchw(images: np.ndarray, source: str) -> np.ndarray:
    """uint8 (N,H,W) or (N,H,W,C) -> float32 (N,C,H,W) in [0, 1]."""
    if images.ndim == 3:
        images = images[:, None, :, :]
    elif images.ndim == 4 and images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    elif images.ndim != 4:
        raise DataError(f"{source}: expected images of shape (N,H,W) or (N,H,W,C), got {images.shape}")
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images, dtype=np.float32) / 255.0
    raise DataError(f"{source}: expected uint8 pixels, got {images.dtype}")


def _labels(y: np.ndarray, n: int, source: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{source}: expected labels of shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: expected integer labels, got {y.dtype}")
    if n and y.min() < 0:
        raise DataError(f"{source}: negative labels")
    return y.astype(np.int64)


def _load_digits() -> tuple[Split, Split]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / DIGITS_MAX_VALUE)[:, None, :, :]  # (1797, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=DIGITS_TEST_SIZE, stratify=y, random_state=DIGITS_SPLIT_STATE
    )
    idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)  # keep the bundled order within each split
    return Split(x[idx_train], y[idx_train]), Split(x[idx_test], y[idx_test])


def _load_npz_file(path: Path) -> Split:
    if not path.is_file():
        raise DataError(f"data.root: no such file '{path}' (expected train.npz and test.npz)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise DataError(f"{path}: expected arrays 'x' and 'y', found {sorted(z.files)}")
            x_raw, y_raw = z["x"], z["y"]
    except DataError:
        raise
    except Exception as e:  # zipfile/pickle/value errors from a bad archive
        raise DataError(f"{path}: not a readable .npz archive ({e})") from e
    x = _to_nchw(x_raw, str(path))
    if x.shape[0] == 0:
        raise DataError(f"{path}: holds no images; expected at least one")
    return Split(x, _labels(y_raw, x.shape[0], str(path)))


def _load_imagefolder(root: Path) -> tuple[Split, Split]:
    from torchvision.datasets import ImageFolder

    splits = []
    classes = None
    for part in ("train", "test"):
        folder = root / part
        if not folder.is_dir():
            raise DataError(f"data.root: no folder '{folder}' (expected train/ and test/ with one sub-folder per class)")
        try:
            ds = ImageFolder(str(folder))
        except (FileNotFoundError, RuntimeError) as e:
            raise DataError(f"data.root: '{folder}': {e}") from e
        if classes is not None and ds.classes != classes:
            raise DataError("data.root: train/ and test/ have different class folders")
        classes = ds.classes
        images = [np.asarray(ds.loader(p)) for p, _ in ds.samples]
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise DataError(f"data.root: '{folder}' images differ in size {sorted(shapes)[:3]}; resize them first")
        x = _to_nchw(np.stack(images), str(folder))
        splits.append(Split(x, np.array([t for _, t in ds.samples], dtype=np.int64)))
    return splits[0], splits[1]


def _load_torchvision(name: str, root: Path, download: bool) -> tuple[Split, Split]:
    import torchvision.datasets as tvd

    cls = {
        "mnist": tvd.MNIST,
        "fashionmnist": tvd.FashionMNIST,
        "svhn": tvd.SVHN,
        "cifar10": tvd.CIFAR10,
        "cifar100": tvd.CIFAR100,
    }[name]
    splits = []
    for train in (True, False):
        try:
            if name == "svhn":
                ds = cls(str(root), split="train" if train else "test", download=download)
                x = np.asarray(ds.data).transpose(0, 2, 3, 1)  # (N,3,H,W) -> (N,H,W,3)
                y = np.asarray(ds.labels)
            else:
                ds = cls(str(root), train=train, download=download)
                data = ds.data
                x = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
                y = np.asarray(ds.targets)
        except (RuntimeError, OSError) as e:
            hint = "" if download else " (download is off; set data.download: true to fetch it)"
            raise DataError(f"data.root: {name} not found under '{root}'{hint}") from e
        xs = _to_nchw(x, f"{name}:{root}")
        splits.append(Split(xs, _labels(y, xs.shape[0], name)))
    return splits[0], splits[1]


def _normalize(split: Split, mean: list[float], std: list[float]) -> Split:
    c = split.x.shape[1]
    if len(mean) != c:
        raise DataError(f"data.normalize: {len(mean)} channel values given, images have {c} channels")
    m = np.asarray(mean, dtype=np.float32).reshape(1, c, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, c, 1, 1)
    return Split((split.x - m) / s, split.y)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load the configured dataset from local files (or the embedded digits)."""
    if cfg.dataset == "digits":
        train, test = _load_digits()
    else:
        root = Path(cfg.root or "")
        if not root.exists() and not (cfg.download and cfg.dataset not in ("npz", "imagefolder")):
            raise DataError(f"data.root: no such folder '{root}'")
        if cfg.dataset == "npz":
            train, test = _load_npz_file(root / "train.npz"), _load_npz_file(root / "test.npz")
        elif cfg.dataset == "imagefolder":
            train, test = _load_imagefolder(root)
        else:
            train, test = _load_torchvision(cfg.dataset, root, cfg.download)
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(
            f"data.root: train images {train.x.shape[1:]} and test images {test.x.shape[1:]} differ in shape"
        )
    if cfg.normalize is not None:
        train = _normalize(train, cfg.normalize.mean, cfg.normalize.std)
        test = _normalize(test, cfg.normalize.mean, cfg.normalize.std)
    return Dataset(cfg.dataset, train, test)


def check_labels_fit(ds: Dataset, num_classes: int) -> None:
    """The data's labels must be valid class ids for a ``num_classes`` model."""
    if ds.num_labels > num_classes:
        raise DataError(
            f"model.num_classes: {num_classes}, but the dataset has labels up to {ds.num_labels - 1}"
        )


def select_forget_indices(
    y: np.ndarray, classes: list[int], per_class: int, selection: str, seed: int,
    field: str = "forget.samples_per_class",
) -> np.ndarray:
    """Indices of ``per_class`` training samples of each of ``classes``.

    ``first`` takes them in dataset order (the paper's protocol); ``random``
    draws them with ``seed``. Fewer available than requested is an error that
    names the config ``field`` that asked for them.
    """
    rng = np.random.default_rng(seed)
    picked = []
    for c in classes:
        idx = np.flatnonzero(y == c)
        if idx.size < per_class:
            raise DataError(
                f"{field}: {per_class} requested, but class {c} has only "
                f"{idx.size} training samples"
            )
        picked.append(idx[:per_class] if selection == "first" else np.sort(rng.choice(idx, per_class, replace=False)))
    return np.concatenate(picked)


def select_retained_indices(
    y: np.ndarray, forget: list[int], num_classes: int, per_class: int, seed: int
) -> np.ndarray:
    """``unlearn.nhle.retained_per_class`` samples of every class not in ``forget``, drawn with
    ``seed`` (the opt-in retained-data mode); empty when ``per_class`` is 0."""
    if per_class == 0:
        return np.zeros(0, dtype=np.int64)
    retained = [c for c in range(num_classes) if c not in forget]
    return select_forget_indices(y, retained, per_class, "random", seed, field="unlearn.nhle.retained_per_class")
