"""The user's model as they hold it (pipeline/hf_folder.py, logits_adapter.py, checkpoint.py):
a Hugging Face save_pretrained folder, forwards that return more than logits, a timm model with
two heads, and TorchScript / torch.export files, which are refused as models with a line saying
what to hand over instead."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from nhle_pipeline.pipeline.checkpoint import load_weights
from nhle_pipeline.pipeline.errors import ModelError
from nhle_pipeline.pipeline.hf_folder import read_folder_config
from nhle_pipeline.pipeline.logits_adapter import adapt_to_logits, logits_from
from nhle_pipeline.pipeline.models import build_model, find_heads
from tests.conftest import digits_config, write_config

SHAPE = (1, 8, 8)  # digits


def _tiny_vit_config(num_labels: int = 10):
    from transformers import ViTConfig

    return ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, num_labels=num_labels)


def _hf_folder(folder: Path, *, trained_on_digits: bool = False) -> Path:
    """A tiny ViT image classifier, saved as transformers saves it; optionally trained on digits."""
    from transformers import ViTForImageClassification

    torch.manual_seed(0)
    model = ViTForImageClassification(_tiny_vit_config())
    if trained_on_digits:
        from nhle_pipeline.pipeline.config import parse_config
        from nhle_pipeline.pipeline.loading import load_data

        data = load_data(parse_config(digits_config(folder, folder.parent)))
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(25):
            for x, y in data.train.batches(batch_size=64):
                loss = nn.functional.cross_entropy(model(torch.from_numpy(x)).logits, torch.from_numpy(y))
                opt.zero_grad()
                loss.backward()
                opt.step()
    model.save_pretrained(str(folder))
    return folder


def test_an_hf_folder_builds_from_its_config_and_loads_through_transformers(tmp_path):
    folder = _hf_folder(tmp_path / "vit")
    config = read_folder_config(folder)
    model = build_model("huggingface", num_classes=10, input_shape=SHAPE, kwargs={"config": config})
    assert logits_from(model) == "output.logits"
    x = torch.randn(3, *SHAPE)
    before = model(x)
    assert isinstance(before, torch.Tensor) and before.shape == (3, 10)
    assert load_weights(model, folder) is None  # the folder's weights, through from_pretrained
    from transformers import ViTForImageClassification

    saved = ViTForImageClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        assert torch.equal(model.eval()(x), saved(x).logits)  # the same model, logits only
    assert sorted(model.state_dict()) == sorted(saved.state_dict())  # the class swap keeps every key
    assert find_heads(model, 10, None, SHAPE) == ["classifier"]


@pytest.mark.parametrize("break_it, expect", [
    (lambda f: (f / "config.json").unlink(), "config.json' not found"),
    (lambda f: _edit(f, auto_map={"AutoModelForImageClassification": "evil.Model"}), "has auto_map"),
    (lambda f: _edit(f, model_type=None), "names no model_type"),
    (lambda f: (f / "config.json").write_text("{not json"), "is not readable JSON"),
    (lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"), "holds pytorch_model.bin (a pickle"),
    (lambda f: (f / "model.safetensors").write_bytes(b"junk"), "cannot be loaded"),
])
def test_a_broken_hf_folder_is_a_one_line_model_error_naming_the_file(tmp_path, break_it, expect):
    folder = _hf_folder(tmp_path / "vit")
    break_it(folder)
    with pytest.raises(ModelError) as e:
        model = build_model("huggingface", num_classes=10, input_shape=SHAPE,
                            kwargs={"config": read_folder_config(folder)})
        load_weights(model, folder)
    assert expect in str(e.value) and "\n" not in str(e.value)


def _edit(folder: Path, **fields) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))


@pytest.mark.parametrize("config, num_classes, expect", [
    ({"model_type": "vit", "num_labels": 4}, 10, "model.num_classes: 10, but config.json has 4 labels"),
    ({"model_type": "bert"}, 2, "'bert' is not an image classifier"),
    ({"model_type": "no-such-model"}, 2, "cannot read a config of model_type 'no-such-model'"),
])
def test_an_hf_config_that_is_not_this_image_classifier_is_refused(config, num_classes, expect):
    with pytest.raises(ModelError, match=None) as e:
        build_model("huggingface", num_classes=num_classes, input_shape=SHAPE, kwargs={"config": config})
    assert expect in str(e.value)


def test_huggingface_takes_no_kwargs_of_the_users(tmp_path):
    from nhle_pipeline.pipeline.config import parse_config
    from nhle_pipeline.pipeline.loading import with_folder_config

    folder = _hf_folder(tmp_path / "vit")
    cfg = parse_config(digits_config(folder, tmp_path, model={"arch": "huggingface"}))
    resolved = with_folder_config(cfg)  # the folder's config.json, recorded in the run's config
    assert resolved.model.kwargs == {"config": read_folder_config(folder)}
    assert with_folder_config(resolved) == resolved
    bad = parse_config(digits_config(folder, tmp_path, model={"arch": "huggingface", "kwargs": {"hidden_size": 8}}))
    with pytest.raises(ModelError, match="leave model.kwargs out"):
        with_folder_config(bad)
    with pytest.raises(ModelError, match="takes its architecture from the folder's config.json"):
        build_model("huggingface", num_classes=10, input_shape=SHAPE, kwargs={})


class _Returns(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        f = self.body(x)
        logits = self.head(f)
        if self.kind == "dict":
            return {"features": f, "logits": logits}
        if self.kind == "tuple":
            return logits, f
        if self.kind == "ordered":
            return OrderedDict(logits=logits)
        return {"scores": logits}


@pytest.mark.parametrize("kind, how", [("dict", "output['logits']"), ("ordered", "output['logits']"),
                                       ("tuple", "output[0]")])
def test_a_forward_that_returns_a_dict_or_a_tuple_is_adapted_to_its_logits(kind, how):
    model = _Returns(kind).eval()
    keys = sorted(model.state_dict())
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        expected = model.head(model.body(x))
        assert adapt_to_logits(model, model(x)) == how
        assert torch.equal(model(x), expected)
    assert logits_from(model) == how and sorted(model.state_dict()) == keys and isinstance(model, _Returns)
    assert adapt_to_logits(model, model(x)) is None  # adapted once


def test_a_forward_without_logits_is_refused_saying_what_it_returned():
    model = _Returns("scores")
    with pytest.raises(ModelError, match=r"returns a dict with keys \['scores'\]; expected logits"):
        adapt_to_logits(model, model(torch.randn(2, *SHAPE)))


def _mlp_weights(tmp_path: Path):
    model = build_model("mlp", num_classes=10, input_shape=SHAPE, kwargs={"hidden": [16]}).eval()
    return model, torch.randn(2, *SHAPE)


def test_torchscript_and_exported_program_files_are_refused_as_state_dicts_unless_trusted(tmp_path):
    """Their loaders unpickle: refused with a line naming the kind of file; with trust_pickle their
    weights, under the module's own key names, load into model.arch."""
    model, x = _mlp_weights(tmp_path)
    ts, ep = tmp_path / "m.pt", tmp_path / "m.pt2"
    torch.jit.script(model).save(str(ts))
    torch.export.save(torch.export.export(model, (x,)), str(ep))
    for path, kind in ((ts, "a TorchScript program"), (ep, "a torch.export program")):
        fresh = build_model("mlp", num_classes=10, input_shape=SHAPE, kwargs={"hidden": [16]})
        with pytest.raises(ModelError, match=f"is {kind}.*, not a state dict; .*model.trust_pickle: true"):
            load_weights(fresh, path)
        load_weights(fresh, path, trust_pickle=True)
        with torch.no_grad():
            assert torch.equal(fresh.eval()(x), model(x))


def test_a_factory_returning_a_torchscript_program_is_refused_saying_what_to_hand_over(tmp_path, monkeypatch):
    import sys

    model, _ = _mlp_weights(tmp_path)
    torch.jit.script(model).save(str(tmp_path / "m.pt"))
    (tmp_path / "ts_factory_here.py").write_text(
        f"import torch\n\ndef build(num_classes):\n    return torch.jit.load({str(tmp_path / 'm.pt')!r})\n")
    monkeypatch.chdir(tmp_path)
    try:
        with pytest.raises(ModelError, match="returned a TorchScript program .*give model.arch the architecture"):
            build_model("ts_factory_here:build", num_classes=10, input_shape=SHAPE, trust_code=True)
    finally:
        sys.modules.pop("ts_factory_here", None)


def test_timms_distilled_deit_has_both_heads_found():
    """timm's own DeiT-distilled (made tiny): `head` and `head_dist` are averaged, so both are heads."""
    m = build_model("timm:deit_tiny_distilled_patch16_224", num_classes=10, input_shape=SHAPE,
                    kwargs={"img_size": 8, "patch_size": 4, "depth": 1, "embed_dim": 16, "num_heads": 2})
    assert sorted(find_heads(m, 10, None, SHAPE)) == ["head", "head_dist"]


@pytest.mark.slow
def test_an_hf_folder_releases_with_no_code_opt_in_and_verifies_with_its_folder(tmp_path):
    """`model.arch: huggingface` + the folder end to end: released masked at the output, the
    folder's config recorded, and verify rebuilds the architecture from the release's own config
    (fresh-export comparison) and the original from the folder (--source-weights)."""
    from nhle_pipeline.pipeline.cli import cli

    folder = _hf_folder(tmp_path / "vit", trained_on_digits=True)
    cfg = write_config(tmp_path / "hf.yaml", digits_config(folder, tmp_path / "releases", model={
        "arch": "huggingface"}, verify={"gates": {"acc_r_drop_max": 0.2}}))  # what is tested is the source
    runner = CliRunner()
    r = runner.invoke(cli, ["run", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "the model's logits are its output.logits" in r.output
    rel = tmp_path / "releases" / "digits-test"
    m = json.loads((rel / "manifest.json").read_text())
    assert m["source_model"]["logits_from"] == "output.logits" and m["head"] == "classifier"
    assert m["config"]["model"]["kwargs"]["config"] == read_folder_config(folder)
    assert m["metrics"]["output_masked"] is True
    assert "logits from its output.logits" in (rel / "report.md").read_text()
    for extra in ([], ["--source-weights", str(folder)]):
        v = runner.invoke(cli, ["verify", str(rel), *extra])
        assert v.exit_code == 0, v.output
        assert "[✓] graph_unchanged" in v.output and "[✓] output_masked" in v.output
    (folder / "model.safetensors").write_bytes(np.zeros(8, np.uint8).tobytes())  # not the source any more
    v = runner.invoke(cli, ["verify", str(rel), "--source-weights", str(folder)])
    assert v.exit_code == 2 and "sha256" in v.output


@pytest.mark.slow
def test_timms_two_head_model_releases_masked_at_the_output(tmp_path):
    """The issue's case: DeiT-distilled averages two heads; both are masked, the gate proves it."""
    from nhle_pipeline.pipeline.cli import cli

    weights = tmp_path / "deit.safetensors"
    cfg = write_config(tmp_path / "deit.yaml", digits_config(weights, tmp_path / "releases", model={
        "arch": "timm:deit_tiny_distilled_patch16_224",
        "kwargs": {"img_size": 8, "patch_size": 4, "depth": 1, "embed_dim": 16, "num_heads": 2}},
        train={"epochs": 30}, verify={"gates": {"acc_r_drop_max": 0.2}}))  # what is tested is the masking
    runner = CliRunner()
    assert runner.invoke(cli, ["train", str(cfg)]).exit_code == 0
    r = runner.invoke(cli, ["run", str(cfg)])
    assert r.exit_code == 0, r.output
    rel = tmp_path / "releases" / "digits-test"
    m = json.loads((rel / "manifest.json").read_text())
    assert sorted(m["heads"]) == ["head", "head_dist"] and m["metrics"]["output_masked"] is True
    assert m["metrics"]["forgotten_logit_spread"] == 0.0
    v = runner.invoke(cli, ["verify", str(rel), "--source-weights", str(weights)])
    assert v.exit_code == 0, v.output
