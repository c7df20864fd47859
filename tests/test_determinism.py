"""Same config, same seed, CPU: the same model.onnx, byte for byte, and the same metrics.

Two `pipeline run` processes with different hash seeds (and release folders):
neither exporter state nor dict or set ordering may leak into the artifact. The manifest must hold what it takes to
reproduce the release: the config and its hash, the seed, the source model's
sha256 and the library versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nhle_pipeline.pipeline.checkpoint import sha256_file
from nhle_pipeline.pipeline.config import parse_config
from nhle_pipeline.pipeline.release.files import MANIFEST
from tests.conftest import digits_config, write_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NAME = "digits-test"


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, allow_nan=True)


@pytest.fixture(scope="module")
def two_releases(tmp_path_factory, digits_weights) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("determinism")
    cfg = write_config(root / "run.yaml", digits_config(digits_weights, root / "releases"))
    for out, hash_seed in (("a", "1"), ("b", "12345")):
        # one intra-op thread: fast on a busy machine, and the same for both runs
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        p = subprocess.run([sys.executable, "-m", "nhle_pipeline.pipeline", "run", str(cfg), "--out", str(root / out)],
                           capture_output=True, text=True, env=env, cwd=root, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
    return root / "a" / NAME, root / "b" / NAME, cfg


def test_same_seed_gives_byte_identical_onnx_and_identical_metrics(two_releases):
    a, b, _ = two_releases
    assert (a / "model.onnx").read_bytes() == (b / "model.onnx").read_bytes()
    onnx_files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.onnx"))
    assert onnx_files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*.onnx"))
    for rel in onnx_files:  # the model and any copy of it (e.g. a serving repository)
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    ma, mb = (json.loads((d / MANIFEST).read_text()) for d in (a, b))
    assert _canonical(ma["metrics"]) == _canonical(mb["metrics"])
    assert _canonical(ma["gates"]) == _canonical(mb["gates"])
    assert ma["files"]["model.onnx"] == mb["files"]["model.onnx"]
    assert ma["config_sha256"] == mb["config_sha256"]


def test_manifest_records_what_it_takes_to_reproduce(two_releases, digits_weights):
    a, _, cfg_path = two_releases
    m = json.loads((a / MANIFEST).read_text())
    # the config, complete, validates again and hashes to the recorded value
    cfg = parse_config(m["config"])
    assert cfg.sha256() == m["config_sha256"]
    assert m["config_sha256"] == hashlib.sha256(_canonical(m["config"]).encode()).hexdigest()
    assert cfg == parse_config(yaml.safe_load(cfg_path.read_text()))
    assert m["seed"] == cfg.seed == 0
    assert m["source_model"]["sha256"] == sha256_file(digits_weights)
    assert m["source_model"]["arch"] == "mlp"
    versions = m["runtime"]["versions"]
    for lib in ("pipeline", "python", "torch", "onnx", "onnxruntime", "numpy"):
        assert versions.get(lib), lib
    assert m["runtime"]["torch_device"] == "cpu"
    assert m["runtime"]["onnxruntime_provider"] == "CPUExecutionProvider"
    # provenance travels inside the artifact too (what a server sees without the manifest)
    from nhle_pipeline.verify.ort import read_metadata

    meta = read_metadata(a / "model.onnx")
    assert meta["config_sha256"] == m["config_sha256"]
    assert meta["source_model_sha256"] == m["source_model"]["sha256"]
    assert meta["forget_classes"] == "0"
