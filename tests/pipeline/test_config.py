import pytest

from nhle_pipeline.pipeline.config import Config, load_config, parse_config, release_name
from nhle_pipeline.pipeline.errors import ConfigError

BASE = {
    "model": {"arch": "mlp", "weights": "w.safetensors", "num_classes": 10},
    "forget": {"classes": [0]},
}


def with_(section: str, **fields) -> dict:
    return {**BASE, section: {**BASE.get(section, {}), **fields}}


def test_minimal_config_gets_documented_defaults():
    cfg = parse_config(BASE)
    assert cfg.data.dataset == "digits"
    assert cfg.forget.samples_per_class == 16
    assert cfg.forget.selection == "first"
    assert cfg.unlearn.cwm.mode == "calibrated"
    assert cfg.export.opset == 18
    assert cfg.verify.gates.acc_f_max == 0.01
    assert cfg.verify.gates.acc_r_drop_max == 0.035
    assert cfg.release.dir == "releases"


@pytest.mark.parametrize(
    "doc, field",
    [
        ({**BASE, "modle": {}}, "modle: unknown key"),
        (with_("unlearn", nhle={"lr": 0.1, "lrr": 1}), "unlearn.nhle.lrr: unknown key"),
        (with_("model", num_classes="ten"), "model.num_classes"),
        (with_("forget", samples_per_class="16"), "forget.samples_per_class"),
        (with_("forget", samples_per_class=0), "forget.samples_per_class"),
        ({**BASE, "unlearn": {"nhle": {"lr": -0.1}}}, "unlearn.nhle.lr"),
        (with_("forget", classes=[10]), "out of range for model.num_classes=10"),
        (with_("forget", classes=[1, 1]), "duplicate classes"),
        (with_("forget", classes=list(range(10))), "forgetting every class"),
        (with_("forget", classes=[]), "forget.classes"),
        ({"forget": {"classes": [0]}}, "model: required field is missing"),
        (with_("data", dataset="npz"), "needs data.root"),
        (with_("data", dataset="imagenet"), "data.dataset"),
        (with_("release", name="../evil"), "release.name"),
        (with_("release", name="a/b"), "release.name"),
        (with_("export", opset=13), "export.opset"),
        ({**BASE, "device": "tpu"}, "device"),
    ],
)
def test_invalid_configs_name_the_field(doc, field):
    with pytest.raises(ConfigError) as e:
        parse_config(doc, "c.yaml")
    msg = str(e.value)
    assert field in msg
    assert msg.startswith("c.yaml: ")
    assert "\n" not in msg


def test_yaml_syntax_error_gives_line_number(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  arch: mlp\n  num_classes: [10\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+"):
        load_config(p)


@pytest.mark.parametrize("text, expect", [("", "empty"), ("- a\n- b\n", "expected a mapping")])
def test_empty_or_non_mapping_file(tmp_path, text, expect):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=expect):
        load_config(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_release_name_defaults_to_file_stem():
    cfg = parse_config(BASE)
    assert release_name(cfg, "configs/forget-zero.yaml") == "forget-zero"
    named = parse_config(with_("release", name="custom"))
    assert release_name(named, "x.yaml") == "custom"


def test_config_hash_changes_with_content():
    a, b = parse_config(BASE), parse_config(with_("forget", classes=[1]))
    assert a.sha256() == parse_config(BASE).sha256()
    assert a.sha256() != b.sha256()
    assert isinstance(a, Config)
