import numpy as np
import pytest
import torch
from torch import nn

from nhle_pipeline.pipeline import train as train_mod
from nhle_pipeline.pipeline.config import DataConfig, TrainConfig, parse_config
from nhle_pipeline.pipeline.data import Split, load_dataset
from nhle_pipeline.pipeline.errors import ConfigError, ModelError
from nhle_pipeline.pipeline.image_sources import ArraySource, Preprocess
from nhle_pipeline.pipeline.train import (
    build_optimizer,
    build_scheduler,
    crop_flip,
    retained_only,
    steps_per_epoch,
    train_classifier,
    train_original,
)
from tests.conftest import digits_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig())


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


def accuracy(model, split) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(split.x)).argmax(1).numpy() == split.y).mean())


def test_retained_only_drops_the_forgotten_classes(digits):
    train = digits.train
    kept = retained_only(train, [0, 2])
    keep = ~np.isin(train.y, [0, 2])
    np.testing.assert_array_equal(kept.y, train.y[keep])
    np.testing.assert_array_equal(kept.x, train.x[keep])  # the same images, in the same order
    assert len(kept) == int(keep.sum()) and not np.isin(kept.y, [0, 2]).any()
    assert len(retained_only(train, [])) == len(train)


def test_train_classifier_learns_reports_each_epoch_and_ends_in_eval(digits):
    m, seen = net(), []
    train_classifier(m, digits.train, TrainConfig(epochs=3, lr=0.01, batch_size=64), device=CPU, seed=0,
                     on_epoch=lambda e, n, loss: seen.append((e, n, loss)))
    assert [s[:2] for s in seen] == [(1, 3), (2, 3), (3, 3)]
    assert seen[-1][2] < seen[0][2]
    assert not m.training
    assert accuracy(m, digits.test) > 0.9


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_same_seed_same_weights_other_seed_other_weights(digits, optimizer):
    cfg = TrainConfig(epochs=1, lr=0.01, batch_size=64, optimizer=optimizer)
    out = []
    for seed in (7, 7, 8):
        m = net()
        train_classifier(m, digits.train, cfg, device=CPU, seed=seed)
        out.append(m[-1].weight.detach().clone())
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
    assert not torch.equal(out[0], out[2])  # the seed drives the shuffling


def test_a_trailing_one_sample_batch_is_skipped_so_batchnorm_does_not_fail(digits):
    n = len(digits.train)
    batch = (n - 1) // 2  # two full batches, then one sample left over
    assert n % batch == 1
    seen = []
    m = train_classifier(net(), digits.train, TrainConfig(epochs=1, batch_size=batch), device=CPU, seed=0,
                         on_epoch=lambda e, n, loss: seen.append(loss))
    assert len(seen) == 1 and np.isfinite(seen[0]) and not m.training


def cfg(tmp_path, weights):
    return parse_config(digits_config(weights, tmp_path / "releases", train={"epochs": 1}))


def test_train_original_writes_safetensors_and_refuses_to_overwrite(tmp_path):
    w = tmp_path / "m.safetensors"
    path, acc = train_original(cfg(tmp_path, w), device="cpu")
    assert path == w and w.is_file() and 0.5 < acc <= 1.0
    before = w.read_bytes()
    with pytest.raises(ModelError, match="already exists; use --force"):
        train_original(cfg(tmp_path, w), device="cpu")
    assert w.read_bytes() == before


@pytest.mark.parametrize(
    "weights, expect",
    [
        (None, "model.weights: required"),
        ("m.pt", "must end in .safetensors"),
    ],
)
def test_train_original_refuses_bad_targets_before_training(tmp_path, weights, expect):
    doc = digits_config(tmp_path / "x", tmp_path / "releases")
    doc["model"]["weights"] = None if weights is None else str(tmp_path / weights)
    with pytest.raises(ModelError, match=expect):
        train_original(parse_config(doc), device="cpu")


def test_train_original_refuses_a_folder_even_with_force(tmp_path):
    folder = tmp_path / "w.safetensors"
    folder.mkdir()
    with pytest.raises(ModelError, match="is a folder"):
        train_original(cfg(tmp_path, folder), device="cpu", force=True)


# ---------------------------------------------------------------- the recipe (issue #16)


def shapes(n_per_class: int = 64, classes: int = 4, side: int = 12, seed: int = 0) -> Split:
    """Generated RGB images: each class a fixed random template (the same for every ``seed``),
    plus pixel noise drawn from ``seed`` (float32 in [0, 1])."""
    templates = np.random.default_rng(1234).random((classes, 3, side, side), dtype=np.float32)
    y = np.repeat(np.arange(classes), n_per_class)
    noise = np.random.default_rng(seed).random((len(y), 3, side, side), dtype=np.float32)
    x = templates[y] * 0.6 + noise * 0.4
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # (N, H, W, C): the sources' layout
    return Split(y.astype(np.int64), ArraySource(x, Preprocess(), "shapes"), (3, side, side))


def conv_net(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, classes),
    )


def test_onecycle_warms_up_to_the_peak_then_decays_to_a_tiny_rate():
    cfg = TrainConfig(lr=0.2, optimizer="sgd", schedule="onecycle")
    opt = build_optimizer(nn.Linear(2, 2), cfg)
    total = 100
    sched = build_scheduler(opt, cfg, total)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(total):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    lrs = lrs[:total]  # the rate of each of the 100 steps
    peak = int(np.argmax(lrs))
    assert lrs[0] == pytest.approx(0.2 / 25)  # starts at peak / 25
    assert max(lrs) == pytest.approx(0.2) and 25 <= peak <= 33  # the peak, after about 30 % of the steps
    assert all(a < b for a, b in zip(lrs[: peak - 1], lrs[1:peak], strict=True))  # rises ...
    assert all(a > b for a, b in zip(lrs[peak:-1], lrs[peak + 1 :], strict=True))  # ... then falls
    assert lrs[-1] < 0.2 / 1000
    # SGD's momentum cycles the other way (0.95 -> 0.85 at the peak)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95, abs=1e-3)
    assert build_scheduler(opt, TrainConfig(), total) is None  # constant: no schedule


@pytest.mark.parametrize("n, batch, steps", [(10, 4, 3), (9, 4, 2), (8, 4, 2), (1, 4, 1), (5, 1, 0)])
def test_steps_per_epoch_counts_the_batches_that_train(n, batch, steps):
    assert steps_per_epoch(n, batch) == steps  # a trailing 1-sample batch is skipped (n > 1)


def test_onecycle_is_stepped_once_per_trained_batch(digits, monkeypatch):
    made = []

    def spy(opt, cfg, total):
        made.append(build_scheduler(opt, cfg, total))
        return made[-1]

    monkeypatch.setattr(train_mod, "build_scheduler", spy)
    n = len(digits.train)
    batch = (n - 1) // 2  # two full batches and a skipped 1-sample one per epoch
    cfg = TrainConfig(epochs=3, lr=0.05, batch_size=batch, optimizer="sgd", schedule="onecycle")
    train_classifier(net(), digits.train, cfg, device=CPU, seed=0)
    (sched,) = made
    assert sched.total_steps == 6 and sched.last_epoch == 6  # every step taken, none beyond


def test_onecycle_sgd_trains_digits_as_well_as_the_constant_rate(digits):
    base = TrainConfig(epochs=8, lr=0.05, batch_size=64, optimizer="sgd")
    accs = {}
    for schedule in ("constant", "onecycle"):
        m = train_classifier(net(), digits.train, base.model_copy(update={"schedule": schedule}), device=CPU, seed=0)
        accs[schedule] = accuracy(m, digits.test)
    assert accs["onecycle"] > 0.9 and accs["onecycle"] >= accs["constant"] - 0.02, accs


def test_crop_flip_crops_each_image_from_its_own_padded_copy_seeded():
    x = torch.rand(64, 3, 8, 8) + 1.0  # > 0 everywhere: zero padding is visible
    out = crop_flip(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flipped = shifted = 0
    for i in range(len(x)):  # image i comes from image i (its label stays right), at some offset, maybe mirrored
        windows = {(dy, dx): padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(9) for dx in range(9)}
        found = [(dy, dx, f) for (dy, dx), w in windows.items() for f in (False, True)
                 if torch.equal(out[i], w.flip(-1) if f else w)]
        assert found, f"image {i} is not a crop of its padded self"
        dy, dx, f = found[0]
        flipped += f
        shifted += (dy, dx) != (4, 4)
    assert 16 <= flipped <= 48 and shifted >= 56  # about half mirrored; 80 of 81 offsets move the image
    assert not torch.equal(out, x)
    same = crop_flip(x, torch.Generator().manual_seed(3))
    other = crop_flip(x, torch.Generator().manual_seed(4))
    assert torch.equal(out, same) and not torch.equal(out, other)


def test_crop_flip_training_is_seeded_and_keeps_the_batch_order(monkeypatch):
    data = shapes()
    seen = []  # the labels of every batch, as the loss sees them
    cross_entropy = train_mod.F.cross_entropy
    monkeypatch.setattr(train_mod.F, "cross_entropy", lambda z, y, **kw: seen.append(y.clone()) or cross_entropy(z, y, **kw))
    cfg = TrainConfig(epochs=2, lr=0.01, batch_size=32, augment="crop-flip")
    weights = []
    for augment, seed in (("crop-flip", 1), ("crop-flip", 1), ("crop-flip", 2), ("none", 1)):
        m = train_classifier(conv_net(), data, cfg.model_copy(update={"augment": augment}), device=CPU, seed=seed)
        weights.append(m[-1].weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)  # same seed: same result
    assert not torch.equal(weights[0], weights[2]) and not torch.equal(weights[0], weights[3])
    per_run = len(seen) // 4
    # augmentation draws from its own generator: the batches (and their labels) come in the same order
    assert all(torch.equal(a, b) for a, b in zip(seen[:per_run], seen[3 * per_run:], strict=True))


def test_bf16_autocast_runs_the_convolutions_in_bf16_and_learns(monkeypatch):
    data, test = shapes(seed=0), shapes(n_per_class=32, seed=1)  # test: other noise
    model, dtypes = conv_net(), set()
    model[0].register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype) if torch.is_grad_enabled() else None)
    cfg = TrainConfig(epochs=6, lr=0.05, batch_size=32, optimizer="sgd", schedule="onecycle", autocast="bf16")
    train_classifier(model, data, cfg, device=CPU, seed=0)
    assert dtypes == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay float32
    assert accuracy(model, test) > 0.95  # 4 classes: chance is 0.25


def test_channels_last_trains_the_same_model_within_tolerance_and_returns_contiguous_weights():
    data = shapes()
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=32, optimizer="sgd")
    plain = train_classifier(conv_net(), data, cfg, device=CPU, seed=0)
    layouts = []
    model = conv_net()
    model[0].register_forward_pre_hook(
        lambda _m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    cl = train_classifier(model, data, cfg.model_copy(update={"channels_last": True}), device=CPU, seed=0)
    assert len(layouts) == 8 and all(layouts)  # every training batch went in channels-last
    # other convolution kernels sum in another order: the same training up to rounding
    # (measured: at most 1e-4 on weights of about 0.2 after 8 steps)
    for (name, a), b in zip(plain.state_dict().items(), cl.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3, msg=name)
        assert b.is_contiguous(), name  # safetensors writes it as is
    x = torch.from_numpy(shapes(n_per_class=16, seed=1).x)
    with torch.no_grad():
        torch.testing.assert_close(cl(x), plain(x), rtol=1e-3, atol=1e-3)
    assert not torch.equal(plain[0].weight, conv_net()[0].weight)  # it did train


@pytest.mark.parametrize(
    "train, field",
    [
        ({"schedule": "cosine"}, "train.schedule"),
        ({"augment": "mixup"}, "train.augment"),
        ({"autocast": "fp16"}, "train.autocast"),
        ({"channels_last": "yes"}, "train.channels_last"),
        ({"label_smoothing": 1.0}, "train.label_smoothing"),
    ],
)
def test_bad_recipe_values_are_one_line_naming_the_field(tmp_path, train, field):
    with pytest.raises(ConfigError) as e:
        parse_config(digits_config(tmp_path / "m.safetensors", tmp_path / "r", train=train), "c.yaml")
    assert field in str(e.value) and "\n" not in str(e.value)


def _resumable_config(tmp_path):
    """Digits through a small CNN with dropout-free BatchNorm, one-cycle SGD and crop-flip:
    every stream a resume must restore (model, optimizer, schedule, shuffling, augmentation)."""
    return parse_config(digits_config(tmp_path / "w.safetensors", tmp_path / "rel", model={
        "arch": "cnn", "weights": str(tmp_path / "w.safetensors"), "num_classes": 10},
        train={"epochs": 3, "lr": 0.05, "batch_size": 128, "optimizer": "sgd", "schedule": "onecycle",
               "augment": "crop-flip", "weight_decay": 0.0}))


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _interrupt_after(monkeypatch, limit: int) -> None:
    """Ctrl-C once ``limit`` training batches have been drawn (the first run only)."""
    real, seen = Split.batches, [0]

    def batches(self, indices=None, batch_size=256):
        for item in real(self, indices, batch_size):
            if len(item[1]) == 128:  # full training batches (evaluation batches are 256)
                seen[0] += 1
                if seen[0] > limit:
                    raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(Split, "batches", batches)


# 1,347 training images: 10 full batches of 128 and one of 67 an epoch; stopped at an epoch's end / inside epoch 2
@pytest.mark.parametrize("stop_after", [10, 13])
def test_a_stopped_training_resumes_from_its_state_to_the_same_weights(tmp_path, monkeypatch, stop_after):
    cfg = _resumable_config(tmp_path / "whole")
    train_original(cfg, device="cpu")
    whole = _weights(cfg.model.weights)

    cfg = _resumable_config(tmp_path / "stopped")
    state = tmp_path / "stopped" / ("w.safetensors" + train_mod.STATE_SUFFIX)
    _interrupt_after(monkeypatch, stop_after)
    with pytest.raises(KeyboardInterrupt):
        train_original(cfg, device="cpu", state_every_s=0.0)  # state after every batch
    monkeypatch.undo()
    assert state.is_file() and not (tmp_path / "stopped" / "w.safetensors").exists()

    resumed_at = []
    train_original(cfg, device="cpu", on_resume=lambda e, b: resumed_at.append((e, b)))
    assert resumed_at == [(2, stop_after - 10)]  # epoch 2, after the batches it had done
    again = _weights(cfg.model.weights)
    assert again.keys() == whole.keys()
    for k in whole:
        assert torch.equal(whole[k], again[k]), k  # bit for bit: nothing repeated, nothing skipped
    assert not state.exists()  # removed once the weights are saved


def test_a_state_from_another_recipe_is_not_resumed(tmp_path, monkeypatch):
    cfg = _resumable_config(tmp_path)
    _interrupt_after(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train_original(cfg, device="cpu", state_every_s=0.0)
    monkeypatch.undo()
    changed = parse_config({**cfg.model_dump(mode="json"), "train": {**cfg.train.model_dump(mode="json"), "lr": 0.02}})
    resumed_at = []
    train_original(changed, device="cpu", on_resume=lambda e, b: resumed_at.append((e, b)))
    assert resumed_at == []  # a fresh start: the saved state belongs to lr 0.05


def test_a_torn_state_file_is_ignored(tmp_path):
    cfg = _resumable_config(tmp_path)
    (tmp_path / ("w.safetensors" + train_mod.STATE_SUFFIX)).write_bytes(b"PK\x03\x04 torn")
    resumed_at = []
    path, _ = train_original(cfg, device="cpu", on_resume=lambda e, b: resumed_at.append((e, b)))
    assert resumed_at == [] and path.is_file() and not (tmp_path / ("w.safetensors" + train_mod.STATE_SUFFIX)).exists()
