"""Where a split's pixels come from, fetched a batch at a time and never held whole.

A source maps sorted or unsorted row indices to a float32 ``(k, C, H, W)``
batch: arrays (uint8 in memory, or memory-mapped from an ``.npz`` member),
or image files decoded on demand. The preprocessing (resize, center crop,
then ``/ 255`` and per-channel normalisation) is applied per batch, so a
split costs its labels in memory, not its float32 images.

Sources are picklable (DataLoader worker processes get a copy): a memory map
is reopened in each process, never pickled with its data.
"""

from __future__ import annotations

import errno
import hashlib
import os
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nhle_pipeline.pipeline.errors import DataError


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side), center crop, then normalise; None: leave as is."""

    resize: int | None = None
    center_crop: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def spatial(self, batch):
        """(k, C, H, W) uint8 tensor -> resized and cropped, still uint8."""
        if self.resize is None and self.center_crop is None:
            return batch
        from torchvision.transforms.v2 import functional as tvf

        if self.resize is not None:
            batch = tvf.resize(batch, [self.resize], antialias=True)
        if self.center_crop is not None:
            batch = tvf.center_crop(batch, [self.center_crop, self.center_crop])
        return batch

    def to_float(self, batch: np.ndarray) -> np.ndarray:
        """(k, C, H, W) uint8 -> float32 in [0, 1], normalised per channel when set."""
        return self.normalize(batch.astype(np.float32) / 255.0)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Float32 (k, C, H, W) in [0, 1] -> per-channel ``(x - mean) / std`` when set (a new array)."""
        if self.mean is None or self.std is None:
            return np.ascontiguousarray(x, dtype=np.float32)
        c = x.shape[1]
        if len(self.mean) != c:
            raise DataError(f"data.normalize: {len(self.mean)} channel values given, images have {c} channels")
        return ((x - np.asarray(self.mean, np.float32).reshape(1, c, 1, 1))
                / np.asarray(self.std, np.float32).reshape(1, c, 1, 1)).astype(np.float32, copy=False)

    def apply(self, batch_u8: np.ndarray) -> np.ndarray:
        """uint8 (k, C, H, W) -> preprocessed float32 (k, C', H', W')."""
        if self.resize is not None or self.center_crop is not None:
            import torch

            batch_u8 = self.spatial(torch.from_numpy(np.ascontiguousarray(batch_u8))).numpy()
        return self.to_float(batch_u8)


def to_nchw_u8(images: np.ndarray, source: str) -> np.ndarray:
    """uint8 (k,H,W), (k,H,W,C) or (k,C,H,W) -> uint8 (k,C,H,W) (a view where possible)."""
    if images.ndim == 3:
        return images[:, None, :, :]
    if images.ndim == 4 and images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3):
        return images.transpose(0, 3, 1, 2)
    if images.ndim == 4:
        return images
    raise DataError(f"{source}: expected images of shape (N,H,W) or (N,H,W,C), got {images.shape}")


class ArraySource:
    """Rows of a uint8 or float32 image array (in memory or memory-mapped)."""

    def __init__(self, images: np.ndarray, preprocess: Preprocess, source: str) -> None:
        if images.dtype not in (np.uint8, np.float32):
            raise DataError(f"{source}: expected uint8 pixels, got {images.dtype}")
        to_nchw_u8(images[:0], source)  # shape check only
        self.images = images
        self.preprocess = preprocess
        self.source = source

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def fetch(self, indices: np.ndarray) -> np.ndarray:
        rows = to_nchw_u8(np.asarray(self.images[np.asarray(indices, dtype=np.int64)]), self.source)
        if rows.dtype == np.float32:  # already in [0, 1] (the embedded digits): normalisation only
            return self.preprocess.normalize(rows)
        return self.preprocess.apply(rows)


class NpzMember:
    """One array of an ``.npz`` archive, memory-mapped read-only.

    A stored (uncompressed, ``np.savez``) member is mapped in place; a
    compressed one (``np.savez_compressed``) is first extracted once, in
    chunks, to an ``.npy`` file under ``cache_dir`` keyed by the archive's
    path, size and mtime, and mapped from there.
    """

    def __init__(self, archive: Path, member: str, cache_dir: Path) -> None:
        self.archive, self.member, self.cache_dir = archive, member, cache_dir
        self._map: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None}  # each process maps the file itself

    @property
    def array(self) -> np.ndarray:
        if self._map is None:
            self._map = self._open()
        return self._map

    def _open(self) -> np.ndarray:
        name = f"{self.member}.npy"
        try:
            with zipfile.ZipFile(self.archive) as z:
                info = z.getinfo(name)
                if info.compress_type == zipfile.ZIP_STORED:
                    with z.open(info) as f:
                        header = _npy_header(f, self.archive)
                    return np.memmap(self.archive, dtype=header[0], mode="r", shape=header[1],
                                     offset=_data_offset(self.archive, info) + header[2])
                path = self._extracted(z, info)
        except DataError:
            raise
        except (OSError, zipfile.BadZipFile, KeyError, ValueError) as e:
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # the cache's disk is full (extraction): the environment, not the archive
            raise DataError(f"{self.archive}: not a readable .npz archive ({e})") from e
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def _extracted(self, z: zipfile.ZipFile, info: zipfile.ZipInfo) -> Path:
        st = self.archive.stat()
        key = hashlib.sha256(f"{self.archive.resolve()}|{st.st_size}|{st.st_mtime_ns}|{info.filename}".encode()).hexdigest()[:32]
        out = self.cache_dir / "npz" / f"{key}.npy"
        if out.is_file():
            try:
                np.load(out, mmap_mode="r", allow_pickle=False)
                return out
            except (OSError, ValueError):  # a torn or corrupt extraction: redo it
                out.unlink(missing_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            with z.open(info) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
            tmp.replace(out)
        except BaseException as e:  # a full cache disk, Ctrl-C: no torn extraction left in the cache
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if isinstance(e, OSError) and not e.filename:  # write() names no file: name the one being made
                raise OSError(e.errno, e.strerror or str(e), str(out)) from e
            raise
        return out


def _npy_header(f, source: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, header length) of an .npy stream."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if fortran or dtype.hasobject:
        raise DataError(f"{source}: arrays must be C-ordered plain numbers")
    return dtype, shape, f.tell()


def _data_offset(archive: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored member's data in the archive (after its local header)."""
    with open(archive, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


class MemmapSource(ArraySource):
    """An ArraySource over an NpzMember: the map is opened lazily in each process."""

    def __init__(self, member: NpzMember, n: int, preprocess: Preprocess, source: str) -> None:
        self.member, self.n, self.preprocess, self.source = member, n, preprocess, source

    @property
    def images(self) -> np.ndarray:  # type: ignore[override]
        return self.member.array

    def __len__(self) -> int:
        return self.n


def open_image_file(path: str):
    """``path`` opened for reading, refused unless it is a regular file (a FIFO named ``*.png``
    would block the run forever, a device would be read without end): opened non-blocking, then
    checked on the open descriptor, so it cannot be swapped in between."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise DataError(f"{path}: cannot open the image ({e.strerror})") from e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else (
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
            raise DataError(f"{path}: {kind}, not an image file; an image folder holds regular files only")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def open_image(path: str):
    """The PIL image of the regular file ``path`` (closed on leaving), an image over PIL's pixel
    limit refused (a decompression bomb: a tiny PNG that says it is 20,000 x 20,000): every
    failure a DataError naming the file."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    with open_image_file(path) as f:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit: refused
                im = Image.open(f)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as e:
            raise DataError(f"{path}: cannot decode the image ({str(e).splitlines()[0][:120]})") from e
        with im:
            yield im


class ImageFileSource:
    """Image files decoded on demand (PIL), converted to RGB or L, preprocessed per batch.

    A file that cannot be decoded is a DataError naming it; images of
    different sizes need ``data.transform`` (resize + center crop).
    """

    def __init__(self, paths: list[str], mode: str, preprocess: Preprocess) -> None:
        self.paths, self.mode, self.preprocess = paths, mode, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, i: int) -> np.ndarray:
        import warnings

        from PIL import Image, UnidentifiedImageError

        path = self.paths[i]
        try:
            with open_image(path) as im, warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                arr = np.asarray(im.convert(self.mode))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as e:
            raise DataError(f"{path}: cannot decode the image ({str(e).splitlines()[0][:120]})") from e
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W) uint8

    def fetch(self, indices: np.ndarray) -> np.ndarray:
        import torch

        rows = []
        for i in np.asarray(indices, dtype=np.int64):
            img = self.preprocess.spatial(torch.from_numpy(np.ascontiguousarray(self.decode(int(i))))[None])[0]
            rows.append(img.numpy())
        shapes = {r.shape for r in rows}
        if len(shapes) > 1:
            raise DataError(
                f"{self.paths[int(indices[0])]}: images differ in size {sorted(shapes)[:3]}; "
                "set data.transform (resize and center_crop, or preset: imagenet)"
            )
        return self.preprocess.to_float(np.stack(rows)) if rows else np.zeros((0, 0, 0, 0), np.float32)
