"""benchmarks/datagen.py: the scale benchmark's generated imagefolder and random-init weights.

Data generation only: no pipeline subprocess runs here (benchmarks/scale.py
itself is run by hand, not by the test suite).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from benchmarks.datagen import (
    MARKER,
    class_name,
    make_imagefolder,
    random_init_weights,
    split_counts,
)
from nhle_pipeline.pipeline.checkpoint import load_weights
from nhle_pipeline.pipeline.models import build_model


def _files(root, split):
    return {c.name: sorted(c.glob("*.jpg")) for c in sorted((root / split).iterdir()) if c.is_dir()}


def test_split_counts_spread_images_75_25():
    counts = split_counts(2000, 10)
    assert counts == [(150, 50)] * 10
    uneven = split_counts(203, 10)
    assert sum(a + b for a, b in uneven) == 203
    assert all(a >= 1 and b >= 1 for a, b in uneven)
    with pytest.raises(ValueError):
        split_counts(10, 10)


def test_imagefolder_layout_counts_and_images(tmp_path):
    root = make_imagefolder(tmp_path / "if", 80, size=224, classes=4, seed=0, processes=1)
    train, test = _files(root, "train"), _files(root, "test")
    assert list(train) == list(test) == [class_name(c) for c in range(4)]
    assert all(len(v) == 15 for v in train.values())  # 20 per class: 15 train, 5 test
    assert all(len(v) == 5 for v in test.values())
    with Image.open(train["c00"][0]) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (224, 224)
    with Image.open(test["c03"][-1]) as im:
        assert im.size == (224, 224)


def test_classes_differ_and_images_are_deterministic(tmp_path):
    a = make_imagefolder(tmp_path / "a", 40, size=32, classes=2, seed=3, processes=1)
    b = make_imagefolder(tmp_path / "b", 40, size=32, classes=2, seed=3, processes=1)
    fa, fb = _files(a, "train"), _files(b, "train")
    assert fa["c00"][0].read_bytes() == fb["c00"][0].read_bytes()

    def mean_rgb(p):
        with Image.open(p) as im:
            return torch.tensor(list(im.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))), dtype=torch.float32)

    assert (mean_rgb(fa["c00"][0]) - mean_rgb(fa["c01"][0])).abs().max() > 30  # the class tint shows


def test_imagefolder_is_idempotent_and_regenerates_on_new_parameters(tmp_path):
    root = make_imagefolder(tmp_path / "if", 40, size=32, classes=4, processes=1)
    first = root / "train" / "c00" / "000000.jpg"
    stamp = first.stat().st_mtime_ns
    make_imagefolder(root, 40, size=32, classes=4, processes=1)
    assert first.stat().st_mtime_ns == stamp  # the marker matched: nothing rewritten
    make_imagefolder(root, 20, size=32, classes=4, processes=1)  # other parameters: start over
    assert sum(len(v) for v in _files(root, "train").values()) + sum(len(v) for v in _files(root, "test").values()) == 20
    assert (root / MARKER).is_file()


def test_parallel_generation_writes_the_same_files(tmp_path):
    one = make_imagefolder(tmp_path / "one", 500, size=16, classes=10, processes=1)
    two = make_imagefolder(tmp_path / "two", 500, size=16, classes=10, processes=2)
    for split in ("train", "test"):
        f1, f2 = _files(one, split), _files(two, split)
        assert {k: [p.name for p in v] for k, v in f1.items()} == {k: [p.name for p in v] for k, v in f2.items()}
        assert f1["c07"][-1].read_bytes() == f2["c07"][-1].read_bytes()


def test_random_init_weights_loadable(tmp_path):
    path = random_init_weights("cnn", 10, (3, 32, 32), tmp_path / "w" / "cnn.safetensors", seed=1)
    assert path.is_file() and path.suffix == ".safetensors"
    model = build_model("cnn", num_classes=10, input_shape=(3, 32, 32), kwargs={})
    load_weights(model, path)
    torch.manual_seed(1)
    fresh = build_model("cnn", num_classes=10, input_shape=(3, 32, 32), kwargs={})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
