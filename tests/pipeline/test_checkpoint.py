import os
import pickle

import pytest
import torch

from nhle_pipeline.pipeline.checkpoint import load_weights, save_weights
from nhle_pipeline.pipeline.errors import ModelError
from nhle_pipeline.pipeline.models import build_model


def mlp(num_classes=10, hidden=None):
    return build_model("mlp", num_classes=num_classes, input_shape=(1, 8, 8), kwargs={"hidden": hidden or [16]})


def test_safetensors_and_state_dict_roundtrip(tmp_path):
    a = mlp()
    save_weights(a, tmp_path / "a.safetensors")
    b = mlp()
    load_weights(b, tmp_path / "a.safetensors")
    torch.testing.assert_close(a.classifier.weight, b.classifier.weight)
    torch.save({"state_dict": a.state_dict()}, tmp_path / "a.pt")
    c = mlp()
    load_weights(c, tmp_path / "a.pt")
    torch.testing.assert_close(a.classifier.bias, c.classifier.bias)


def test_checkpoint_of_another_shape_or_arch_is_refused(tmp_path):
    save_weights(mlp(num_classes=5), tmp_path / "five.safetensors")
    with pytest.raises(ModelError, match=r"'classifier.weight' has shape \(5, 16\), expected \(10, 16\)"):
        load_weights(mlp(), tmp_path / "five.safetensors")
    lenet = build_model("lenet", num_classes=10, input_shape=(1, 28, 28))
    save_weights(lenet, tmp_path / "lenet.safetensors")
    with pytest.raises(ModelError, match="does not fit model.arch"):
        load_weights(mlp(), tmp_path / "lenet.safetensors")


@pytest.mark.parametrize(
    "name, content, expect",
    [
        ("empty.pt", b"", "is empty"),
        ("junk.safetensors", b"\x00\x01garbage", "not a valid safetensors"),
        ("junk.pt", b"this is not a checkpoint", "not a readable PyTorch checkpoint"),
    ],
)
def test_broken_files(tmp_path, name, content, expect):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ModelError, match=expect):
        load_weights(mlp(), tmp_path / name)


def test_truncated_checkpoint(tmp_path):
    save_weights(mlp(), tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a valid safetensors"):
        load_weights(mlp(), tmp_path / "w.safetensors")
    torch.save(mlp().state_dict(), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        load_weights(mlp(), tmp_path / "w.pt")


def test_missing_file():
    with pytest.raises(ModelError, match="no such file"):
        load_weights(mlp(), "/nonexistent/w.pt")


class _Exploit:
    """Unpickling this runs os.system: the load must refuse it by default."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"classifier.weight": _Exploit(marker)}, f)
    with pytest.raises(ModelError, match="needs full unpickling"):
        load_weights(mlp(), tmp_path / "evil.pt")
    assert not marker.exists()


def test_trust_pickle_loads_a_full_module(tmp_path):
    a = mlp()
    torch.save(a, tmp_path / "module.pt")  # a whole nn.Module needs full unpickling
    with pytest.raises(ModelError, match="trust_pickle"):
        load_weights(mlp(), tmp_path / "module.pt")
    b = mlp()
    load_weights(b, tmp_path / "module.pt", trust_pickle=True)
    torch.testing.assert_close(a.classifier.weight, b.classifier.weight)


@pytest.mark.parametrize("prefix", ["module.", "model.", "_orig_mod."])
def test_a_training_wrappers_prefix_is_removed_and_said(tmp_path, prefix):
    """DistributedDataParallel, Lightning/EMA and torch.compile save every key with a prefix."""
    from safetensors.torch import save_file

    from nhle_pipeline.pipeline.checkpoint import load_weights
    from tests.factories import tiny_net

    src, dst = tiny_net(3), tiny_net(3)
    save_file({prefix + k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    assert load_weights(dst, tmp_path / "w.safetensors") == prefix
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    assert load_weights(dst, tmp_path / "plain.safetensors") is None
    # only some keys prefixed: not a wrapper, the keys do not fit
    mixed = {(prefix + k if i == 0 else k): v.contiguous() for i, (k, v) in enumerate(src.state_dict().items())}
    save_file(mixed, str(tmp_path / "mixed.safetensors"))
    with pytest.raises(ModelError, match="does not fit model.arch"):
        load_weights(dst, tmp_path / "mixed.safetensors")
