"""The CLI end to end on digits: exit codes, messages, what is (not) written."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nhle_pipeline.pipeline.cli import cli
from nhle_pipeline.pipeline.release.manifest import file_digests

pytestmark = pytest.mark.slow


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_run_releases_verified_artifact_and_verify_inspect_agree(make_config, tmp_path):
    cfg = make_config()
    r = invoke("run", cfg)
    assert r.exit_code == 0, r.output
    rel = tmp_path / "releases" / "digits-test"
    assert sorted(p.name for p in rel.iterdir()) == ["manifest.json", "model.onnx", "model.safetensors", "report.html",
                                                     "report.md", "triton"]
    m = json.loads((rel / "manifest.json").read_text())
    assert m["status"] == "released" and m["passed"] is True
    assert m["files"] == file_digests(rel)
    un, orig = m["metrics"]["unlearned"], m["metrics"]["original"]
    assert orig["acc_f"] > 0.9 and un["acc_f"] <= 0.01
    assert m["metrics"]["delta_acc_r"] >= -0.02
    assert {g["name"] for g in m["gates"]} == {"acc_f", "acc_r_drop", "evidence_copy", "nhle_completed", "output_masked", "parity",
                                           "batch_independent", "graph_unchanged", "cwm_in_graph"}
    assert m["runtime"]["onnxruntime_provider"] == "CPUExecutionProvider"
    assert set(m["timings_s"]) >= {"load", "baseline", "nhle", "cwm", "export", "verify"}
    assert "Acc_F" in r.output and "released" in r.output
    assert "RELEASED" in (rel / "report.md").read_text()
    # what NHLE ran with is recorded (the default variant's presets, resolved) and reported
    nh = m["metrics"]["nhle"]
    assert nh["settings"]["variant"] == "anchored" and nh["settings"]["optimizer"] == "relative"
    assert nh["stopped"] == "forgotten" and nh["forget_acc_end"] <= 0.5  # the default stops at half
    assert "NHLE settings: variant anchored, optimizer relative, lr 0.0003" in (rel / "report.md").read_text()
    assert "variant anchored" in (rel / "report.html").read_text()
    ev = m["metrics"]["evidence"]
    # the original separates class 0 (Ratio_D > 1); the unlearned model's MIA-efficacy rises above the original's
    assert ev["original"]["ratio_d"] > 1.0 and ev["unlearned"]["ratio_d"] > 0
    assert ev["unlearned"]["mia_efficacy"] > ev["original"]["mia_efficacy"]
    assert ev["reference"] is None

    v = invoke("verify", rel)
    assert v.exit_code == 0, v.output
    assert "verdict: pass" in v.output

    i = invoke("inspect", "--json", rel / "model.onnx")
    meta = json.loads(i.stdout)["provenance"]
    assert meta["forget_classes"] == [0] and meta["config_sha256"] == m["config_sha256"]
    assert json.loads(invoke("inspect", "--json", rel).stdout) == json.loads(i.stdout)  # the release folder

    # a second run must not overwrite the release
    before = (rel / "model.onnx").read_bytes()
    again = invoke("run", cfg)
    assert again.exit_code == 2
    assert "already exists; use --force" in again.output
    assert (rel / "model.onnx").read_bytes() == before

    # tampering is detected
    (rel / "report.md").write_text("edited")
    t = invoke("verify", rel)
    assert t.exit_code == 2 and "report.md: sha256 differs" in t.output


def test_force_replaces_release(make_config, tmp_path):
    cfg = make_config()
    assert invoke("run", cfg).exit_code == 0
    r = invoke("run", cfg, "--force")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "releases" / "digits-test" / "manifest.json").is_file()


def test_failed_gate_exits_1_keeps_report_releases_nothing(make_config, tmp_path):
    # no unlearning at all: the original still recognises class 0, the acc_f gate must block it
    cfg = make_config(unlearn={"nhle": {"enabled": False}, "cwm": {"mode": "none"}})
    r = invoke("run", cfg)
    assert r.exit_code == 1, r.output
    assert "gate(s) failed: acc_f, nhle_completed;" in r.output  # and CWM alone would not do either
    assert not (tmp_path / "releases" / "digits-test").exists()
    staging = list((tmp_path / "releases" / ".staging").iterdir())
    assert len(staging) == 1
    m = json.loads((staging[0] / "manifest.json").read_text())
    assert m["status"] == "gate_failed"
    acc_f = next(g for g in m["gates"] if g["name"] == "acc_f")
    assert acc_f["passed"] is False and acc_f["value"] > 0.9 and acc_f["threshold"] == 0.01
    assert "NOT RELEASED" in (staging[0] / "report.md").read_text()


def test_evidence_gate_blocks_a_leaky_model_and_reference_is_reported(make_config, tmp_path):
    # a linear probe still separates class 0 in the features (AUC ~1): a strict probe gate must fail
    cfg = make_config(verify={"gates": {"probe_auc_max": 0.6}, "reference": "retrain"}, train={"epochs": 5})
    r = invoke("run", cfg)
    assert r.exit_code == 1, r.output
    assert "gate(s) failed: probe_auc;" in r.output
    staging = next((tmp_path / "releases" / ".staging").iterdir())
    m = json.loads((staging / "manifest.json").read_text())
    ev = m["metrics"]["evidence"]
    probe = next(g for g in m["gates"] if g["name"] == "probe_auc")
    assert probe["value"] == ev["unlearned"]["probe_auc"] > 0.9 and probe["threshold"] == 0.6
    # the retrained reference never saw class 0: it never predicts it, and the gap is reported
    assert m["metrics"]["reference"]["acc_f"] == 0.0
    gap = ev["gap_to_reference"]
    assert gap["ratio_d"] == pytest.approx(abs(ev["unlearned"]["ratio_d"] - ev["reference"]["ratio_d"]))
    assert "retrained" in r.output and "reference" in m["timings_s"]
    html = (staging / "report.html").read_text()
    assert '<th class="n">reference</th>' in html and html.count('src="data:image/png;base64,') == 2  # the charts (+ the PCA's phone layout)


@pytest.mark.parametrize(
    "overrides, expect",
    [
        ({"model": {"arch": "mlp", "weights": "/nope.safetensors", "num_classes": 10}}, "model.weights: no such file"),
        ({"forget": {"classes": [12]}}, "out of range for model.num_classes=10"),
        ({"model": {"arch": "lenet"}}, "lenet needs images of at least 12x12"),
        ({"forget": {"classes": [0], "samples_per_class": 500}}, "class 0 has only"),
        ({"unlearn": {"nhle": {"lr": "fast"}}}, "unlearn.nhle.lr"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(make_config, tmp_path, overrides, expect):
    cfg = make_config(**overrides)
    r = invoke("run", cfg)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0]
    assert not (tmp_path / "releases").exists()


def test_checkpoint_with_wrong_num_classes(make_config, tmp_path):
    cfg = make_config(model={"num_classes": 12}, forget={"classes": [0]})
    r = invoke("run", cfg)
    assert r.exit_code == 2
    assert "does not fit the model" in r.output and "(12, 128)" in r.output


def test_init_writes_a_loadable_starter_and_never_overwrites(tmp_path):
    p = tmp_path / "starter.yaml"
    assert invoke("init", p).exit_code == 0
    text = p.read_text()
    assert "forget:" in text and "# " in text
    r = invoke("init", p)
    assert r.exit_code == 2 and "already exists" in r.output
    assert p.read_text() == text


def test_train_refuses_to_overwrite_weights(make_config, digits_weights):
    before = digits_weights.read_bytes()
    r = invoke("train", make_config())
    assert r.exit_code == 2 and "already exists; use --force" in r.output
    assert digits_weights.read_bytes() == before


def test_verify_and_inspect_reject_non_releases(tmp_path):
    r = invoke("verify", tmp_path)
    assert r.exit_code == 2 and "manifest.json: missing" in r.output
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"garbage")
    r = invoke("inspect", bad)
    assert r.exit_code == 2 and "x.onnx" in r.output


def test_unexpected_crash_exits_3_not_1(make_config, monkeypatch):
    import nhle_pipeline.pipeline.run

    def boom(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(nhle_pipeline.pipeline.run, "run_pipeline", boom)
    r = CliRunner().invoke(cli, ["run", str(make_config())])
    assert r.exit_code == 3
    assert "internal error (RuntimeError)" in r.output and "simulated bug" in r.output


def test_an_import_path_arch_needs_trust_code(tmp_path):
    """`tests.factories:tiny_net` runs code on import: refused (exit 2, nothing written) unless trusted."""
    from tests.conftest import digits_config, write_config

    cfg = digits_config(tmp_path / "tiny.safetensors", tmp_path / "releases",
                        model={"arch": "tests.factories:tiny_net", "kwargs": {"hidden": 16}},
                        train={"epochs": 3})
    path = write_config(tmp_path / "tiny.yaml", cfg)
    r = invoke("train", path)
    assert r.exit_code == 2 and "model.trust_code: true" in r.output, r.output
    assert not (tmp_path / "tiny.safetensors").exists()
    r = invoke("train", path, "--trust-code")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "tiny.safetensors").is_file()


def test_init_refuses_a_dangling_symlink_and_an_unwritable_folder(tmp_path, monkeypatch):
    link = tmp_path / "p.yaml"
    link.symlink_to(tmp_path / "nowhere.yaml")
    r = invoke("init", link)
    assert r.exit_code == 2 and "a symbolic link to nothing" in r.output
    assert not (tmp_path / "nowhere.yaml").exists()

    def read_only(self, *args, **kwargs):  # root writes anywhere: simulate the read-only folder
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_text", read_only)
    r = invoke("init", tmp_path / "q.yaml")
    assert r.exit_code == 2 and r.output.strip() == f"error: {tmp_path / 'q.yaml'}: cannot write it (Permission denied)"


def test_an_interrupted_train_says_its_state_is_kept(make_config, monkeypatch):
    """Ctrl-C in `pipeline train`: exit 130, one line saying the state is kept for a resume."""
    import nhle_pipeline.pipeline.train as train_mod

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "train_classifier", stopped)
    r = CliRunner().invoke(cli, ["train", str(make_config()), "--force"])
    assert r.exit_code == 130, r.output
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert err == ["error: interrupted; no weights were written (the training state is kept: run the same command "
                   "to resume)"], r.stderr
