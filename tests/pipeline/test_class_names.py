"""Class identity: names from the data (or data.class_names) reach the manifest and the
ONNX metadata, forget.classes may name a class, and verify checks that the names agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nhle_pipeline.pipeline.config import DataConfig, load_config, parse_config
from nhle_pipeline.pipeline.data import load_dataset
from nhle_pipeline.pipeline.errors import DataError
from nhle_pipeline.pipeline.loading import resolve_request
from nhle_pipeline.pipeline.release.check import verify_release
from nhle_pipeline.pipeline.run import run_pipeline
from nhle_pipeline.verify.ort import read_metadata
from tests.conftest import digits_config, write_config

FOLDERS = ["11", "2", "cat"]  # sorted as strings: '11' < '2' < 'cat', so folder '2' is id 1


def _imagefolder(root: Path, per_class: int = 6) -> Path:
    """One class folder per name; each class's images share a colour (easy to tell apart)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for part in ("train", "test"):
        for c, name in enumerate(FOLDERS):
            (root / part / name).mkdir(parents=True)
            for i in range(per_class):
                pixel = np.full((8, 8, 3), 40 + 80 * c, dtype=np.uint8) + rng.integers(0, 20, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixel).save(root / part / name / f"{i}.png")
    return root


def _request(root: Path, weights: Path, **data) -> dict:
    return {"model": {"arch": "mlp", "num_classes": 3, "weights": str(weights)},
            "data": {"dataset": "imagefolder", "root": str(root), **data},
            "forget": {"classes": ["2"], "samples_per_class": 4}}


def test_imagefolder_names_are_the_sorted_folders_and_a_name_resolves_to_its_id(tmp_path):
    root = _imagefolder(tmp_path / "imgs", per_class=2)
    data = load_dataset(DataConfig(dataset="imagefolder", root=str(root)))
    assert data.class_names == ("11", "2", "cat")
    cfg, names = resolve_request(parse_config(_request(root, tmp_path / "w.safetensors")), data)
    assert cfg.forget_ids == [1] and names == FOLDERS
    assert cfg.forget.classes == [1]  # the recorded config holds the id


def test_digits_are_named_by_their_digit():
    assert load_dataset(DataConfig()).class_names == tuple(str(d) for d in range(10))


@pytest.mark.parametrize(("data", "classes", "expect"), [
    ({"class_names": ["a", "b", "c"]}, ["b"], "differ from the data's own class names"),
    ({}, ["dog"], "['dog'] are not class names of this data"),
    ({}, ["2", 1], "name the same class twice"),
])
def test_names_that_do_not_fit_the_data_are_refused(tmp_path, data, classes, expect):
    root = _imagefolder(tmp_path / "imgs", per_class=1)
    raw = _request(root, tmp_path / "w.safetensors", **data)
    raw["forget"]["classes"] = classes
    with pytest.raises(DataError, match=expect.replace("[", r"\[").replace("]", r"\]")):
        resolve_request(parse_config(raw), load_dataset(parse_config(raw).data))


def test_config_names_are_checked_before_any_data(tmp_path):
    raw = _request(tmp_path, tmp_path / "w.safetensors", class_names=["x", "y", "z"])
    with pytest.raises(Exception, match=r"forget.classes: \['2'\] are not in data.class_names"):
        parse_config(raw)
    raw["data"]["class_names"] = ["x", "y"]
    raw["forget"]["classes"] = [0]
    with pytest.raises(Exception, match="2 names for model.num_classes=3"):
        parse_config(raw)
    raw["data"]["class_names"] = ["x", "x", "z"]
    with pytest.raises(Exception, match="duplicate class names"):
        parse_config(raw)


@pytest.mark.slow
def test_a_release_records_its_class_names_and_verify_checks_them(tmp_path):
    from nhle_pipeline.pipeline.train import train_original

    root = _imagefolder(tmp_path / "imgs")
    raw = _request(root, tmp_path / "mlp.safetensors")
    raw.update(seed=0, device="cpu", release={"dir": str(tmp_path / "rel"), "name": "named"},
               train={"epochs": 40, "lr": 0.01, "batch_size": 8})
    raw["verify"] = {"gates": {"acc_r_drop_max": 0.5}}
    raw["unlearn"] = {"nhle": {"stop_margin": 1.0}}  # a 3-class toy: the default margin takes > 200 steps
    _, acc = train_original(parse_config(raw), device="cpu")
    assert acc == 1.0
    cfg_path = write_config(tmp_path / "named.yaml", raw)
    result = run_pipeline(load_config(cfg_path), cfg_path)
    m = result.manifest
    assert m.class_names == FOLDERS and m.forget_classes == [1]
    assert m.metrics.unlearned.per_class[1] == 0.0  # folder '2' forgotten, not folder 'cat'
    meta = read_metadata(result.path / "model.onnx")
    assert json.loads(meta["class_names"]) == FOLDERS and meta["forget_classes"] == "1"
    assert verify_release(result.path).passed

    # the deployer's copy of the data with a folder renamed: the ids no longer mean the same classes
    (root / "test" / "cat").rename(root / "test" / "dog")
    (root / "train" / "cat").rename(root / "train" / "dog")
    with pytest.raises(DataError, match="class names"):
        verify_release(result.path)


def test_digits_config_with_names_resolves(tmp_path):
    raw = digits_config(tmp_path / "w.safetensors", tmp_path / "rel", forget={"classes": ["3", 5]})
    cfg, names = resolve_request(parse_config(raw), load_dataset(DataConfig()))
    assert cfg.forget_ids == [3, 5] and names == [str(d) for d in range(10)]
