"""Generated inputs for the scale benchmark: an imagefolder of JPEGs and random-init weights.

``make_imagefolder`` writes ``root/train/<class>/*.jpg`` and
``root/test/<class>/*.jpg`` (75 % / 25 % of each class): smooth random
images (low-resolution noise upsampled) with a class-dependent colour tint,
so that classes differ. Every image is seeded by (seed, class, index), so
the files do not depend on how the work is split between processes. A
marker file records the parameters of a complete folder; a second call with
the same parameters returns at once.

    python -m benchmarks.datagen DIR --images 2000 [--size 224]
"""

from __future__ import annotations

import argparse
import colorsys
import json
import shutil
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

MARKER = ".datagen.json"
FORMAT_VERSION = 1  # bump when the generated images change
SPLITS = ("train", "test")
TRAIN_FRACTION = 0.75
JPEG_QUALITY = 90
NOISE_SIDE = 8  # the low-resolution noise that is upsampled: smooth blobs, not pixel noise
TINT_WEIGHT = 0.5  # share of the class colour in every pixel
PARALLEL_MIN_IMAGES = 500  # below this, one process is faster than starting a pool


def class_name(c: int) -> str:
    return f"c{c:02d}"


def split_counts(n_images: int, classes: int) -> list[tuple[int, int]]:
    """(train, test) images per class: ``n_images`` spread over the classes, 75 % / 25 % of each."""
    if classes < 1 or n_images < 2 * classes:
        raise ValueError(f"need at least 2 images per class, got {n_images} images for {classes} classes")
    base, extra = divmod(n_images, classes)
    out = []
    for c in range(classes):
        n = base + (1 if c < extra else 0)
        n_train = min(n - 1, max(1, round(n * TRAIN_FRACTION)))
        out.append((n_train, n - n_train))
    return out


def _tint(c: int, classes: int) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(c / classes, 0.8, 0.9)
    return np.array([r, g, b], dtype=np.float32) * 255.0


def _write_class(job: tuple[str, int, int, int, int, int, int]) -> int:
    """Write one class's images of one split; returns how many were written."""
    from PIL import Image

    folder, c, classes, first, count, size, seed = job
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tint = _tint(c, classes)
    for i in range(first, first + count):
        rng = np.random.default_rng([seed, c, i])
        noise = rng.integers(0, 256, size=(NOISE_SIDE, NOISE_SIDE, 3), dtype=np.uint8)
        img = Image.fromarray(noise).resize((size, size), Image.Resampling.BICUBIC)
        pixels = np.asarray(img, dtype=np.float32) * (1 - TINT_WEIGHT) + tint * TINT_WEIGHT
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out / f"{i:06d}.jpg", quality=JPEG_QUALITY)
    return count


def _params(n_images: int, size: int, classes: int, seed: int) -> dict:
    return {"version": FORMAT_VERSION, "n_images": n_images, "size": size, "classes": classes, "seed": seed}


def is_complete(root: Path, n_images: int, size: int = 224, classes: int = 10, seed: int = 0) -> bool:
    marker = Path(root) / MARKER
    try:
        return json.loads(marker.read_text()) == _params(n_images, size, classes, seed)
    except (OSError, ValueError):
        return False


def make_imagefolder(
    root: Path, n_images: int, size: int = 224, classes: int = 10, seed: int = 0, *, processes: int = 2
) -> Path:
    """Write (or find complete) an imagefolder of ``n_images`` JPEGs under ``root``; returns ``root``."""
    root = Path(root)
    if is_complete(root, n_images, size, classes, seed):
        return root
    counts = split_counts(n_images, classes)
    (root / MARKER).unlink(missing_ok=True)
    for part in SPLITS:  # a partial or different folder: start over
        shutil.rmtree(root / part, ignore_errors=True)
    jobs = []
    for c, (n_train, n_test) in enumerate(counts):
        # Train and test images of a class are indices 0..n-1 of one seeded sequence.
        jobs.append((str(root / "train" / class_name(c)), c, classes, 0, n_train, size, seed))
        jobs.append((str(root / "test" / class_name(c)), c, classes, n_train, n_test, size, seed))
    if processes > 1 and n_images >= PARALLEL_MIN_IMAGES:
        chunked = []  # ~4 jobs per process keeps both busy to the end
        step = max(1, n_images // len(jobs) // 4)
        for folder, c, k, first, count, sz, sd in jobs:
            for start in range(first, first + count, step):
                chunked.append((folder, c, k, start, min(step, first + count - start), sz, sd))
        with get_context("spawn").Pool(processes) as pool:
            written = sum(pool.map(_write_class, chunked, chunksize=1))
    else:
        written = sum(_write_class(j) for j in jobs)
    if written != n_images:
        raise RuntimeError(f"wrote {written} images, expected {n_images}")
    (root / MARKER).write_text(json.dumps(_params(n_images, size, classes, seed)))
    return root


def random_init_weights(
    arch: str, num_classes: int, input_shape: tuple[int, int, int], path: Path, seed: int = 0
) -> Path:
    """Build ``arch`` with seeded random weights and save them as safetensors at ``path``."""
    import torch

    from nhle_pipeline.pipeline.checkpoint import save_weights
    from nhle_pipeline.pipeline.models import build_model

    torch.manual_seed(seed)
    model = build_model(arch, num_classes=num_classes, input_shape=tuple(input_shape), kwargs={})
    save_weights(model, path)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    make_imagefolder(args.root, args.images, args.size, args.classes, args.seed)
    print(f"{args.root}: {args.images} images at {args.size} px ({time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
