"""Datasets as streams of batches, and the forget-sample selection.

No split is held whole in memory: a ``Split`` keeps its labels and a source
that fetches pixels a batch at a time (pipeline/image_sources.py): the
embedded digits as a small array, ``npz`` members memory-mapped, image
folders decoded on demand (worker processes: ``data.workers``), the
torchvision sets as their uint8 arrays. Every batch is float32
``(k, C, H, W)``: ``uint8 / 255`` (grayscale gets C = 1), then
``data.transform`` (resize, center crop) and ``data.normalize`` when set.
Subsets (forget samples, probe and MIA samples) are chosen from the labels
alone. Nothing is downloaded unless ``data.download: true``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from nhle_pipeline.pipeline.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from nhle_pipeline.pipeline.errors import DataError
from nhle_pipeline.pipeline.image_sources import (
    ArraySource,
    ImageFileSource,
    MemmapSource,
    NpzMember,
    Preprocess,
    open_image,
)
from nhle_pipeline.pipeline.names import name_problem

# scikit-learn's digits have no official split: a fixed stratified split
# (450 test images, random_state 0, independent of the run's seed) keeps the
# split identical across runs and machines. The bundled order's last images
# come from other writers, so a plain head/tail split would test writer shift.
DIGITS_TEST_SIZE = 450
DIGITS_SPLIT_STATE = 0
DIGITS_MAX_VALUE = 16.0  # digits pixels are integers 0..16
CACHE_ENV = "PIPELINE_CACHE_DIR"  # where extracted npz members (and the baseline cache) live


def default_cache_dir() -> Path:
    """``$PIPELINE_CACHE_DIR``, else ``$XDG_CACHE_HOME/nhle-pipeline``, else ``~/.cache/nhle-pipeline``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nhle-pipeline"


class _Batches:
    """A map-style dataset whose items are whole batches (a list of row indices each),
    so that DataLoader workers decode batches, not single images."""

    def __init__(self, source, batches: list[np.ndarray]) -> None:
        self.source, self.batches = source, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        try:
            return self.source.fetch(self.batches[i])
        except DataError as e:  # returned, not raised: a worker's traceback would become the message
            return e


class Split:
    """Labelled images of one split: labels in memory, pixels fetched per batch."""

    def __init__(self, y: np.ndarray, source, image_shape: tuple[int, int, int], workers: int = 0,
                 rows: np.ndarray | None = None) -> None:
        self.y = y
        self.source = source
        self.image_shape = image_shape
        self.workers = workers
        self.rows = rows  # positions in the source (a subset view), or None: all of it

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def _source_rows(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        return idx if self.rows is None else self.rows[idx]

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Float32 (k, C, H, W) images of ``indices`` (positions in this split), fetched here."""
        x = self.source.fetch(self._source_rows(indices))
        self._check_shape(x)
        return x

    def image_batches(self, indices: np.ndarray | None = None, batch_size: int = 256) -> Iterator[np.ndarray]:
        """Float32 (k, C, H, W) batches of ``indices`` (default: every image), in that order."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        chunks = [self._source_rows(idx[i : i + batch_size]) for i in range(0, len(idx), batch_size)]
        if self.workers == 0 or len(chunks) < 2:
            for rows in chunks:
                x = self.source.fetch(rows)
                self._check_shape(x)
                yield x
            return
        from torch.utils.data import DataLoader

        loader = DataLoader(_Batches(self.source, chunks), batch_size=None, shuffle=False,
                            num_workers=self.workers, collate_fn=_identity, prefetch_factor=2)
        for x in loader:
            if isinstance(x, DataError):
                raise x
            self._check_shape(x)
            yield x

    def batches(self, indices: np.ndarray | None = None, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images, labels) batches of ``indices`` (default: every image), in that order."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        for i, x in enumerate(self.image_batches(idx, batch_size)):
            yield x, self.y[idx[i * batch_size : i * batch_size + len(x)]]

    def subset(self, indices: np.ndarray) -> Split:
        """A view of ``indices`` of this split (no pixels are read)."""
        idx = np.asarray(indices, dtype=np.int64)
        return Split(self.y[idx], self.source, self.image_shape, self.workers, self._source_rows(idx))

    @cached_property
    def x(self) -> np.ndarray:
        """Every image as one float32 array. For small sets only (benchmarks, tests):
        the pipeline itself never calls it."""
        return np.concatenate(list(self.image_batches())) if len(self) else np.zeros((0, *self.image_shape), np.float32)

    def _check_shape(self, x: np.ndarray) -> None:
        if x.shape[1:] != self.image_shape:
            raise DataError(
                f"data.root: images of shape {x.shape[1:]} where the first was {self.image_shape}; "
                "set data.transform (resize and center_crop, or preset: imagenet)"
            )


def _identity(x):
    return x


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    class_names: tuple[str, ...] | None = None  # the data's own name of each label, in label order

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image, after preprocessing."""
        return self.train.image_shape

    @property
    def num_labels(self) -> int:
        return int(max(self.train.y.max(initial=0), self.test.y.max(initial=0))) + 1


def _labels(y: np.ndarray, n: int, source: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{source}: expected labels of shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: expected integer labels, got {y.dtype}")
    if n and y.min() < 0:
        raise DataError(f"{source}: negative labels")
    return y.astype(np.int64)


def _array_split(images: np.ndarray, y, pre: Preprocess, source: str, workers: int = 0) -> Split:
    src = ArraySource(images, pre, source)
    n = len(src)
    if n == 0:
        raise DataError(f"{source}: holds no images; expected at least one")
    labels = _labels(y, n, source)
    return Split(labels, src, tuple(src.fetch(np.arange(1)).shape[1:]), workers)


def _load_digits(pre: Preprocess) -> tuple[Split, Split, tuple[str, ...]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / DIGITS_MAX_VALUE)[:, None, :, :]  # (1797, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=DIGITS_TEST_SIZE, stratify=y, random_state=DIGITS_SPLIT_STATE
    )
    idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)  # keep the bundled order within each split
    return (_array_split(x[idx_train], y[idx_train], pre, "digits"),
            _array_split(x[idx_test], y[idx_test], pre, "digits"), tuple(str(c) for c in range(10)))


def _load_npz_file(path: Path, pre: Preprocess, cache_dir: Path) -> tuple[Split, tuple[str, ...] | None]:
    import zipfile

    if not path.is_file():
        raise DataError(f"data.root: no such file '{path}' (expected train.npz and test.npz)")
    try:
        with zipfile.ZipFile(path) as z:
            members = {n.removesuffix(".npy") for n in z.namelist()}
        if "x" not in members or "y" not in members:
            raise DataError(f"{path}: expected arrays 'x' and 'y', found {sorted(members)}")
        with np.load(path, allow_pickle=False) as z:
            y_raw = z["y"]
            names = _npz_class_names(z, path) if "class_names" in members else None
    except DataError:
        raise
    except Exception as e:  # zipfile/pickle/value errors from a bad archive
        raise DataError(f"{path}: not a readable .npz archive ({e})") from e
    member = NpzMember(path, "x", cache_dir)
    images = member.array
    if images.dtype != np.uint8:
        raise DataError(f"{path}: expected uint8 pixels, got {images.dtype}")
    src = MemmapSource(member, int(images.shape[0]), pre, str(path))
    if len(src) == 0:
        raise DataError(f"{path}: holds no images; expected at least one")
    labels = _labels(y_raw, len(src), str(path))
    return Split(labels, src, tuple(src.fetch(np.arange(1)).shape[1:]), 0), names


def _npz_class_names(z, path: Path) -> tuple[str, ...]:
    """An npz archive's optional 'class_names': a 1-D array of strings, one per label."""
    names = z["class_names"]
    if names.ndim != 1 or names.dtype.kind != "U" or not all(names):
        raise DataError(f"{path}: 'class_names' must be a 1-D array of non-empty strings, got {names.dtype} {names.shape}")
    for n in names:
        problem = name_problem(str(n))
        if problem:
            raise DataError(f"{path}: 'class_names': {problem}")
    return tuple(str(n) for n in names)


def _load_imagefolder(root: Path, pre: Preprocess, workers: int) -> tuple[Split, Split, tuple[str, ...]]:
    from torchvision.datasets import ImageFolder

    splits = []
    classes = None
    for part in ("train", "test"):
        folder = root / part
        if not folder.is_dir():
            raise DataError(f"data.root: no folder '{folder}' (expected train/ and test/ with one sub-folder per class)")
        try:
            ds = ImageFolder(str(folder), loader=_no_decode)  # scans file names only
        except (FileNotFoundError, RuntimeError) as e:
            raise DataError(f"data.root: '{folder}': {e}") from e
        if classes is not None and ds.classes != classes:
            raise DataError("data.root: train/ and test/ have different class folders")
        classes = ds.classes
        for name in classes:
            problem = name_problem(name)
            if problem:
                raise DataError(f"data.root: class folder '{folder / name}': {problem}")
        paths = [p for p, _ in ds.samples]
        labels = np.array([t for _, t in ds.samples], dtype=np.int64)
        if not paths:
            raise DataError(f"data.root: '{folder}' holds no images")
        _regular_files(paths)
        src = ImageFileSource(paths, "L" if _is_gray(paths[0]) else "RGB", pre)
        splits.append(Split(labels, src, tuple(src.fetch(np.arange(1)).shape[1:]), workers))
    return splits[0], splits[1], tuple(classes or ())


def _no_decode(path: str) -> str:
    return path


def _regular_files(paths: list[str]) -> None:
    """Every image path a regular file (links followed), checked before any work: a FIFO named
    ``*.png`` would block the run, a device would be read without end (decoding checks again)."""
    import stat

    for p in paths:
        try:
            mode = os.stat(p).st_mode
        except OSError as e:
            raise DataError(f"{p}: cannot read the image ({e.strerror})") from e
        if not stat.S_ISREG(mode):
            raise DataError(f"{p}: not a regular file (a pipe, socket or device); an image folder holds image files only")


def _is_gray(path: str) -> bool:
    """Whether the (first) image is grayscale; an image that cannot be opened is a DataError naming it."""
    with open_image(path) as im:
        return im.mode in ("L", "1", "I;16", "I")


def _load_torchvision(name: str, root: Path, download: bool, pre: Preprocess) -> tuple[Split, Split, tuple[str, ...] | None]:
    import torchvision.datasets as tvd

    cls = {
        "mnist": tvd.MNIST,
        "fashionmnist": tvd.FashionMNIST,
        "svhn": tvd.SVHN,
        "cifar10": tvd.CIFAR10,
        "cifar100": tvd.CIFAR100,
    }[name]
    splits = []
    classes = None
    for train in (True, False):
        try:
            if name == "svhn":
                ds = cls(str(root), split="train" if train else "test", download=download)
                x = np.asarray(ds.data)  # (N, 3, H, W) uint8
                y = np.asarray(ds.labels)
            else:
                ds = cls(str(root), train=train, download=download)
                data = ds.data
                x = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
                y = np.asarray(ds.targets)
            classes = getattr(ds, "classes", None)
        except (RuntimeError, OSError) as e:
            hint = "" if download else " (download is off; set data.download: true to fetch it)"
            raise DataError(f"data.root: {name} not found under '{root}'{hint}") from e
        splits.append(_array_split(x, y, pre, f"{name}:{root}"))
    return splits[0], splits[1], tuple(map(str, classes)) if classes else None


AUTO_BATCH_MAX = 256
AUTO_BATCH_MIN = 16
AUTO_BATCH_PIXELS = 256 * 64 * 64  # the automatic batch holds about this many pixels per channel


def eval_batch_size(cfg: DataConfig, input_shape: tuple[int, int, int]) -> int:
    """``data.batch_size``, or automatic: a power of two with about ``AUTO_BATCH_PIXELS``
    pixels per channel, between 16 and 256 (256 at 64 px and below, 16 at 224 px)."""
    if cfg.batch_size is not None:
        return cfg.batch_size
    _, h, w = input_shape
    fit = max(1, AUTO_BATCH_PIXELS // max(1, h * w))
    return int(min(AUTO_BATCH_MAX, max(AUTO_BATCH_MIN, 2 ** (fit.bit_length() - 1))))


def preprocess_for(cfg: DataConfig) -> Preprocess:
    """The configured preprocessing: ``data.transform`` (preset or explicit) and ``data.normalize``."""
    t = cfg.transform
    resize = crop = None
    mean = std = None
    if t is not None:
        resize, crop = t.resolved_sizes()
        if t.preset == "imagenet" and cfg.normalize is None:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
    if cfg.normalize is not None:
        mean, std = tuple(cfg.normalize.mean), tuple(cfg.normalize.std)
    return Preprocess(resize, crop, mean, std)


def load_dataset(cfg: DataConfig, cache_dir: Path | None = None) -> Dataset:
    """The configured dataset from local files (or the embedded digits), as streams."""
    pre = preprocess_for(cfg)
    cache = cache_dir or default_cache_dir()
    if cfg.dataset == "digits":
        if cfg.transform is not None and (cfg.transform.resize or cfg.transform.center_crop or cfg.transform.preset):
            raise DataError("data.transform: resize and crop apply to uint8 images; digits are float (use normalize only)")
        train, test, names = _load_digits(pre)
    else:
        root = Path(cfg.root or "")
        if not root.exists() and not (cfg.download and cfg.dataset not in ("npz", "imagefolder")):
            raise DataError(f"data.root: no such folder '{root}'")
        if cfg.dataset == "npz":
            (train, names), (test, _) = (_load_npz_file(root / "train.npz", pre, cache),
                                         _load_npz_file(root / "test.npz", pre, cache))
        elif cfg.dataset == "imagefolder":
            train, test, names = _load_imagefolder(root, pre, cfg.workers)
        else:
            train, test, names = _load_torchvision(cfg.dataset, root, cfg.download, pre)
    if train.image_shape != test.image_shape:
        raise DataError(
            f"data.root: train images {train.image_shape} and test images {test.image_shape} differ in shape"
        )
    return Dataset(cfg.dataset, train, test, names)


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
