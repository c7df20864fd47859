"""A release a deployer can trust: `pipeline verify` under the deployer's policy, against
forgers who re-seal the manifest, swap the model, plant links and folders, or ask for a download.

One signed release of the digits model per module (a whole `pipeline run`: slow); each case
works on its own copy and must leave it exactly as it was (verify never writes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from nhle_pipeline.pipeline.cli import cli
from tests.conftest import digits_config, write_config
from tests.test_bad_inputs import snapshot

pytestmark = pytest.mark.slow
NAME = "digits-test"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _keypair(folder: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    key, pub = _keypair(root, "producer")
    _, other = _keypair(root, "someone-else")
    return {"key": key, "pub": pub, "other": other}


@pytest.fixture(scope="module")
def signed_release(digits_weights, keys, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("signed")
    cfg = write_config(root / "run.yaml", digits_config(digits_weights, root / "releases"))
    r = invoke("run", cfg, "--sign-key", keys["key"])
    assert r.exit_code == 0, r.output
    rel = root / "releases" / NAME
    assert (rel / "release.sig").is_file() and "release.sig" not in json.loads((rel / "manifest.json").read_text())["files"]
    return rel


@pytest.fixture()
def rel(signed_release, tmp_path) -> Path:
    dst = tmp_path / "shipped" / NAME
    shutil.copytree(signed_release, dst)
    return dst


def _verify(rel: Path, *args, code: int, expect: str = ""):
    """Run `pipeline verify`; check its exit code, its one error line (exit 2) and that nothing changed."""
    before = snapshot(rel.parent.parent)
    r = invoke("verify", rel, *args)
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    if code == 2:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert expect in r.output, r.output
    assert snapshot(rel.parent.parent) == before, "verify changed files"
    return r


# --- a forger's tools ---------------------------------------------------------------------------


def _digest(p: Path) -> dict:
    from nhle_pipeline.pipeline.checkpoint import sha256_file

    return {"sha256": sha256_file(p), "bytes": p.stat().st_size}


def _forge(rel: Path, edit=None, model: Path | None = None, rehash_config: bool = True) -> dict:
    """Edit the manifest (``edit``), optionally ship ``model`` (as model.onnx and its Triton copy,
    model.safetensors dropped), recompute config_sha256 (stamped into the model too), every digest,
    and the seal."""
    from nhle_pipeline.export.metadata import stamp_metadata
    from nhle_pipeline.pipeline.config import parse_config
    from nhle_pipeline.pipeline.release.manifest import MANIFEST_SEAL, manifest_seal
    from nhle_pipeline.verify.ort import read_metadata

    m = json.loads((rel / "manifest.json").read_text())
    meta = read_metadata(rel / "model.onnx")
    meta.pop("producer", None)
    if model is not None:
        shutil.copyfile(model, rel / "model.onnx")
        # the unlearned weights would give the old model's logits: a forger drops the optional file
        (rel / "model.safetensors").unlink(missing_ok=True)
        m["files"].pop("model.safetensors", None)
    if edit:
        edit(m)
    if rehash_config:
        m["config_sha256"] = meta["config_sha256"] = parse_config(m["config"]).sha256()
    stamp_metadata(rel / "model.onnx", meta)  # the provenance copied over
    shutil.copyfile(rel / "model.onnx", rel / "triton" / NAME / "1" / "model.onnx")
    for name in m["files"]:
        m["files"][name] = _digest(rel / name)
    m[MANIFEST_SEAL] = manifest_seal(m)
    (rel / "manifest.json").write_text(json.dumps(m, indent=2))
    return m


def _loosen_and_match_original(m: dict) -> None:
    """The gate raised to 1.0, the unlearned model's metrics replaced by the original's."""
    m["config"]["verify"]["gates"]["acc_f_max"] = 1.0
    met = m["metrics"]
    met["unlearned"] = dict(met["original"])
    met["evidence"]["unlearned"] = dict(met["evidence"]["original"])
    met["acc_f"], met["delta_acc_r"] = met["original"]["acc_f"], 0.0
    for g in m["gates"]:
        if g["name"] == "acc_f":
            g["value"], g["threshold"] = met["acc_f"], 1.0
        if g["name"] == "acc_r_drop":
            g["value"] = 0.0


@pytest.fixture(scope="module")
def original_onnx(digits_weights, tmp_path_factory) -> Path:
    """An export of the original (not unlearned) digits model."""
    from nhle_pipeline.export.onnx_export import export_onnx
    from nhle_pipeline.pipeline.checkpoint import load_weights
    from nhle_pipeline.pipeline.models import build_model

    model = build_model("mlp", num_classes=10, input_shape=(1, 8, 8))
    load_weights(model, digits_weights)
    path = tmp_path_factory.mktemp("original") / "model.onnx"
    export_onnx(model, (1, 8, 8), path, opset=18)
    return path


# --- the release as shipped ---------------------------------------------------------------------


def test_the_signed_release_passes_with_key_and_source_weights(rel, keys, digits_weights):
    r = _verify(rel, "--public-key", keys["pub"], "--source-weights", digits_weights, code=0, expect="verdict: pass")
    assert "signature: ok" in r.output and "[✓] graph_unchanged" in r.output and "[✓] cwm_in_graph" in r.output
    assert "measured here from --source-weights" in r.output


def test_without_a_key_the_signature_is_not_checked_and_says_so(rel):
    r = _verify(rel, code=0, expect="signature: present, not checked")
    assert "ΔAcc_R is against the manifest's recorded original Acc_R" in r.output


# --- the forgery of the issue -------------------------------------------------------------------


def test_forged_release_original_model_gate_raised_resealed_fails(rel, original_onnx, keys, digits_weights):
    """model.onnx replaced by an export of the original (provenance copied), acc_f_max raised to
    1.0, metrics and gate values edited to match, config_sha256 and the seal recomputed: the
    masking the manifest records (its forgetting level) is not the shipped model's (to record it
    truthfully, the forger
    would have to record a failed gate, which is refused too); the signature fails it outright.
    With the masking records dropped, the deployer's default gates fail it."""
    _forge(rel, _loosen_and_match_original, model=original_onnx)
    _verify(rel, code=2, expect="records forgetting level 'output', its numbers give 'none'")
    _verify(rel, "--public-key", keys["pub"], code=2, expect="release.sig: the release's files differ from the signed ones")

    def drop_masking_records(m):
        m["gates"] = [g for g in m["gates"] if g["name"] not in ("output_masked", "cwm_in_graph")]
        m["metrics"]["representation"]["level"] = "none"

    _forge(rel, drop_masking_records)
    r = _verify(rel, code=1, expect="gate(s) failed: acc_f, output_masked, cwm_in_graph")
    assert "acc_f_max 1.0 (≠ policy)" in r.output  # shown, not obeyed
    _verify(rel, "--source-weights", digits_weights, code=1, expect="gate(s) failed: acc_f, output_masked, cwm_in_graph")


def test_forged_release_without_a_new_config_hash_is_refused(rel, original_onnx):
    _forge(rel, _loosen_and_match_original, model=original_onnx, rehash_config=False)
    _verify(rel, code=2, expect="config_sha256")


def test_forged_nan_metric_does_not_reproduce(rel):
    _forge(rel, lambda m: m["metrics"]["evidence"]["unlearned"].__setitem__("mia_efficacy", float("nan")))
    _verify(rel, code=1, expect="gate(s) failed: reproduces_manifest")


def test_forged_calibration_is_recomputed_from_the_shipped_model(rel, tmp_path):
    """A 'calibrated' release whose forgotten rows carry the fixed -10^4 (the bias that breaks static
    INT8), with a calibration record edited to match: verify recomputes the bias and fails."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(rel / "model.onnx")
    for init in model.graph.initializer:
        if init.dims == [10]:  # the head's bias: the only 10-vector of the digits MLP
            bias = numpy_helper.to_array(init).copy()
            bias[0] = -10000.0
            init.CopyFrom(numpy_helper.from_array(bias, init.name))
    forged = tmp_path / "forged.onnx"
    onnx.save(model, forged)

    def edit(m):
        m["metrics"]["cwm"]["bias"] = m["metrics"]["cwm"]["calibration"]["bias"] = -10000.0

    _forge(rel, edit, model=forged)
    r = _verify(rel, code=1, expect="gate(s) failed: cwm_calibration")
    assert "cwm_in_graph" not in r.stderr.split("gate(s) failed:")[-1]  # the rows match the record; the record lies


# --- hygiene: links, unlisted folders, downloads ------------------------------------------------


def test_triton_version_2_symlinked_to_the_original_is_refused(rel, original_onnx):
    (rel / "triton" / NAME / "2").symlink_to(original_onnx.parent, target_is_directory=True)
    _verify(rel, code=2, expect="2: a symbolic link")


def test_model_symlinked_outside_the_release_is_refused(rel, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copyfile(rel / "model.onnx", outside)  # same bytes: checksums alone would pass
    (rel / "model.onnx").unlink()
    (rel / "model.onnx").symlink_to(outside)
    _verify(rel, code=2, expect="model.onnx: a symbolic link")


def test_unlisted_symlinked_folder_is_refused(rel, tmp_path):
    (tmp_path / "x").mkdir()
    (rel / "extras").symlink_to(tmp_path / "x", target_is_directory=True)
    _verify(rel, code=2, expect="extras: a symbolic link")


def test_unlisted_empty_folder_is_refused(rel):
    (rel / "triton" / NAME / "3").mkdir()
    _verify(rel, code=2, expect="3: a folder no listed file is in")


def test_a_listed_triton_version_2_is_refused(rel, original_onnx):
    (rel / "triton" / NAME / "2").mkdir()
    shutil.copyfile(original_onnx, rel / "triton" / NAME / "2" / "model.onnx")

    def add(m):
        m["files"]["triton/digits-test/2/model.onnx"] = {}

    _forge(rel, add)
    _verify(rel, code=2, expect="triton/digits-test/2/model.onnx: not a file of a release")


def test_a_different_triton_model_is_refused(rel, original_onnx):
    m = _forge(rel)
    shutil.copyfile(original_onnx, rel / "triton" / NAME / "1" / "model.onnx")
    from nhle_pipeline.pipeline.release.manifest import MANIFEST_SEAL, manifest_seal

    m["files"]["triton/digits-test/1/model.onnx"] = _digest(rel / "triton" / NAME / "1" / "model.onnx")
    m[MANIFEST_SEAL] = manifest_seal(m)
    (rel / "manifest.json").write_text(json.dumps(m))
    _verify(rel, code=2, expect="not a byte-identical copy of model.onnx")


def test_a_download_request_is_never_followed(rel, tmp_path):
    nowhere = tmp_path / "nowhere"
    _forge(rel, lambda m: m["config"]["data"].update({"dataset": "mnist", "root": str(nowhere), "download": True}))
    _verify(rel, code=2, expect="pipeline verify never downloads")
    assert not nowhere.exists()


def test_a_download_flag_on_embedded_data_is_ignored_and_said(rel):
    _forge(rel, lambda m: m["config"]["data"].update({"download": True}))
    _verify(rel, code=0, expect="data.download: true; ignored")


# --- the deployer's policy ----------------------------------------------------------------------


def test_policy_file_and_flags_decide_the_thresholds(rel, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("gates:\n  acc_f_max: 0.0\n  acc_r_drop_max: 0.05\n")
    _verify(rel, "--policy", policy, code=0, expect="acc_r_drop_max 0.05")
    # a flag overrides the file (probe AUC is 1.0 on digits: ΔAcc_R is within a sample or two of 0,
    # its sign depends on the thread count, so it cannot make a deterministic failure)
    _verify(rel, "--policy", policy, "--probe-auc-max", "0.5", code=1, expect="gate(s) failed: probe_auc")


@pytest.mark.parametrize("policy, args, expect", [
    ("require_signature: true\n", [], "--public-key: the policy requires a signature"),
    ("require_source_weights: true\n", [], "--source-weights: the policy requires"),
    ("gates:\n  acc_f_maxx: 0.1\n", [], "gates.acc_f_maxx: unknown key"),
    ("gates:\n  acc_f_max: 0.0\n  acc_f_max: 1.0\n", [], "the key 'acc_f_max' is given twice"),
    ("", ["--acc-f-max", "2"], "--acc-f-max"),
    ("", ["--source-weights", "{other_weights}"], "--source-weights"),
    ("", ["--public-key", "{other}"], "release.sig: signed with another key"),
    ("", ["--public-key", "{key}"], "--public-key"),  # a private key is not a public key
    ("require_signature: true\npublic_key: {other}\n", [], "release.sig: signed with another key"),
])
def test_bad_policy_keys_and_weights_are_bad_input(rel, tmp_path, keys, policy, args, expect):
    other_weights = tmp_path / "other.safetensors"
    other_weights.write_bytes(b"not the original")
    fill = {"other_weights": other_weights, "other": keys["other"], "key": keys["key"]}
    p = tmp_path / "policy.yaml"
    p.write_text(policy.format(**fill))
    _verify(rel, "--policy", p, *[a.format(**fill) for a in args], code=2, expect=expect)


def test_missing_or_damaged_signature_with_a_key_is_bad_input(rel, keys):
    import base64

    sig = rel / "release.sig"
    good = sig.read_text()
    data = json.loads(good)
    raw = bytearray(base64.b64decode(data["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[len(raw) // 2] ^= 0xFF
    data["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    sig.write_text(json.dumps(data))
    _verify(rel, "--public-key", keys["pub"], code=2, expect="release.sig: does not verify")
    sig.write_text(good[: len(good) // 2])
    _verify(rel, "--public-key", keys["pub"], code=2, expect="release.sig: not a valid signature")
    sig.unlink()
    _verify(rel, "--public-key", keys["pub"], code=2, expect="release.sig: missing")


def test_a_bad_sign_key_fails_before_any_work(make_config, tmp_path):
    key = tmp_path / "not-a-key.pem"
    key.write_text("hello")
    before = snapshot(tmp_path)
    r = invoke("run", make_config(release={"sign_key": str(key)}))
    assert r.exit_code == 2 and "release.sign_key" in r.output and "not a PEM private key" in r.output, r.output
    new = set(snapshot(tmp_path)) - set(before)
    assert not any(p.startswith("releases") for p in new), new


# --- forged graphs and verdicts (the red-team corpus): only the canonical graph verifies -----------


@pytest.mark.parametrize("forge, expect", [
    ("shadowed", "initializers defined twice"),
    ("local_function", "model-local functions"),
    ("dead_branch", "do not contribute to the outputs"),
    ("batch_switch", "not the graph the exporter makes for 'mlp'"),
])
def test_forged_graphs_resealed_are_refused(rel, original_onnx, tmp_path, digits_weights, forge, expect):
    """Each serves the forgotten class somewhere verify's batches do not look; re-sealed, with
    every digest recomputed: refused as a graph no export makes, with or without the weights."""
    from tests import forgeries

    shipped, forged = rel / "model.onnx", tmp_path / "forged.onnx"
    build = {
        "shadowed": lambda: forgeries.shadowed_head(shipped, original_onnx, forged),
        "local_function": lambda: forgeries.local_function_head(shipped, forged),
        "dead_branch": lambda: forgeries.dead_branch(shipped, forged),
        "batch_switch": lambda: forgeries.batch_one_switch(shipped, original_onnx, forged),
    }[forge]
    _forge(rel, model=build())
    _verify(rel, code=2, expect=expect)
    _verify(rel, "--source-weights", digits_weights, code=2, expect=expect)


def test_the_batch_switch_serves_the_class_at_batch_one(rel, original_onnx, tmp_path):
    """What the forgery does (why the structure check is needed): masked in verify's batches,
    the original's answer for one image at a time."""
    import numpy as np

    from nhle_pipeline.pipeline.config import DataConfig
    from nhle_pipeline.pipeline.data import load_dataset
    from nhle_pipeline.verify.ort import open_session, ort_logits
    from tests import forgeries

    forged = forgeries.batch_one_switch(rel / "model.onnx", original_onnx, tmp_path / "f.onnx")
    test = load_dataset(DataConfig()).test
    x = test.get(np.flatnonzero(test.y == 0))
    sess, _ = open_session(forged, "cpu")
    assert (ort_logits(sess, x, 256).argmax(1) == 0).mean() == 0.0
    assert (ort_logits(sess, x, 1).argmax(1) == 0).mean() > 0.5


@pytest.mark.parametrize("edit, expect", [
    (lambda m: m.update(status="gate_failed"), "status 'gate_failed'"),
    (lambda m: m.update(passed=False), "passed false"),
    (lambda m: m["gates"][0].update(passed=False), "records failed gate(s) acc_f"),
    (lambda m: m["gates"][0].update(value=0.9, threshold=1.0), "gate 'acc_f' records 0.9"),
])
def test_a_manifest_whose_verdict_is_not_released_or_not_recomputed_is_refused(rel, edit, expect):
    _forge(rel, edit)
    _verify(rel, code=2, expect=expect)


def test_a_failed_runs_staging_folder_promoted_and_sealed_is_refused(make_config, tmp_path):
    """A real failed run (a gate no model meets), its staging folder moved where a release goes and
    sealed: its manifest says gate_failed."""
    from nhle_pipeline.pipeline.release.manifest import seal_manifest_file

    r = invoke("run", make_config("strict.yaml", release={"name": "strict"}, verify={"gates": {"acc_r_drop_max": 0.0, "acc_f_max": 0.0, "probe_auc_max": 0.0}}))
    assert r.exit_code == 1, r.output
    staging = next((tmp_path / "releases" / ".staging").iterdir())
    promoted = tmp_path / "promoted" / "strict"
    shutil.copytree(staging, promoted, ignore=shutil.ignore_patterns(".work"))
    assert not (staging / "triton").exists()  # nothing there a server would load
    _verify(staging, code=2, expect="a failed run's staging folder, not a release (NOT_RELEASED: ")
    seal_manifest_file(promoted / "manifest.json")
    _verify(promoted, code=2, expect="a failed run's staging folder, not a release")
    (promoted / "NOT_RELEASED").unlink()  # the forger removes the marker too
    _verify(promoted, code=2, expect="status 'gate_failed'")


# --- the forgetting level: recomputed, never taken on trust -----------------------------------------


def test_the_release_states_its_level_and_verify_recomputes_it(rel):
    m = json.loads((rel / "manifest.json").read_text())
    rep = m["metrics"]["representation"]
    # no retrained reference in this run: masking is all it can claim, and both reports say so
    assert rep["level"] == "output" and rep["reference"] is None and rep["original"]["cka_original"] == 1.0
    assert 0 <= rep["unlearned"]["lpr_f"] <= 1 and "forgetting level: output" in (rel / "report.md").read_text()
    assert 'id="forgetting-level"' in (rel / "report.html").read_text()
    # layer-wise too: the digits MLP's first hidden layer, besides the head's input
    assert [layer["layer"] for layer in rep["layers"]] == ["relu"]
    assert 0 <= rep["layers"][0]["unlearned"]["lpr_f"] <= 1 and rep["layers"][0]["original"]["cka_original"] == 1.0
    r = _verify(rel, code=0, expect="forgetting level: output")
    assert "representation audit: LPR_F, LPR_R at the head's input and 1 layer(s)" in r.output


@pytest.mark.parametrize("edit, code, expect", [
    (lambda rep: rep.update(level="representation"), 2, "records forgetting level 'representation'"),
    (lambda rep: rep["unlearned"].update(lpr_f=0.01), 1, "gate(s) failed: reproduces_manifest"),
    (lambda rep: rep["layers"][0]["unlearned"].update(lpr_f=0.01), 1, "gate(s) failed: reproduces_manifest"),
    (lambda rep: rep["layers"][0].update(layer="linear"), 2,
     "metrics.representation.layers: 'linear' is not a layer of the graph; its layers: relu"),
])
def test_a_forged_audit_is_refused(rel, edit, code, expect):
    _forge(rel, lambda m: edit(m["metrics"]["representation"]))
    _verify(rel, code=code, expect=expect)


def test_a_policy_can_require_the_representation_level(rel, tmp_path, keys):
    """The level rests on the producer's retrained reference (verify does not retrain): a policy
    that requires it requires the producer's signature too."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("gates:\n  require_representation: true\n")
    _verify(rel, "--policy", policy, code=2, expect="gates.require_representation: the level is judged against")
    _verify(rel, "--policy", policy, "--public-key", keys["pub"], code=1, expect="gate(s) failed: representation_level")


def test_requiring_the_representation_level_needs_a_reference(make_config):
    from nhle_pipeline.pipeline.config import load_config
    from nhle_pipeline.pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="require_representation needs verify.reference: retrain"):
        load_config(make_config(verify={"gates": {"require_representation": True}}))


def test_the_unlearned_weights_ship_and_must_be_the_models(rel, digits_weights):
    """model.safetensors: the unlearned PyTorch weights (to go on training from), listed and
    checked against model.onnx's logits; the original's weights in their place are refused."""
    from nhle_pipeline.pipeline.checkpoint import load_weights
    from nhle_pipeline.pipeline.models import build_model

    m = json.loads((rel / "manifest.json").read_text())
    assert "model.safetensors" in m["files"]
    model = build_model("mlp", num_classes=10, input_shape=(1, 8, 8))
    load_weights(model, rel / "model.safetensors")  # a plain safetensors state dict of the architecture
    assert float(model.classifier.weight[0].detach().abs().max()) == 0.0  # the masked row, as in model.onnx
    _verify(rel, code=0, expect="model.safetensors gives model.onnx's logits")
    shutil.copyfile(digits_weights, rel / "model.safetensors")
    _forge(rel)
    _verify(rel, code=2, expect="is not model.onnx's initializer of that name")  # tensor by tensor


def test_a_graph_from_another_exporter_is_taken_only_on_a_signature(rel, keys, tmp_path):
    """A graph that differs from this machine's fresh export is tampered when both exporters are the
    same versions; exported with another torch, an unsigned release is refused naming the versions
    to verify with, a signed one verifies (the graph comparison said skipped)."""
    from nhle_pipeline.pipeline.release.signing import load_signing_key, sign_release
    from tests import forgeries

    other = forgeries.identity_before_head(rel / "model.onnx", tmp_path / "other.onnx")
    _forge(rel, model=other)
    sign_release(rel, load_signing_key(keys["key"]))
    _verify(rel, "--public-key", keys["pub"], code=2, expect="not the graph the exporter makes")

    def exported_elsewhere(m):
        m["runtime"]["versions"]["torch"] = "2.0.0"

    _forge(rel, edit=exported_elsewhere)
    _verify(rel, code=2, expect="exported with torch 2.0.0 where this machine has")
    sign_release(rel, load_signing_key(keys["key"]))
    r = _verify(rel, "--public-key", keys["pub"], code=0, expect="graph not compared with a fresh export")
    assert "torch 2.0.0" in r.output
