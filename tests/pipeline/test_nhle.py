import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nhle_pipeline.pipeline.config import NHLE_PRESETS, NHLEConfig
from nhle_pipeline.pipeline.nhle import (
    anchor_loss,
    logit_margin,
    nhle_finetune,
    nhle_loss,
    nhle_targets,
    original_lead,
    retained_classes,
)


def test_targets_follow_eq4():
    t = nhle_targets(torch.tensor([0, 3]), 5)
    assert t[0].tolist() == pytest.approx([-1, 0.25, 0.25, 0.25, 0.25])
    assert t[1].tolist() == pytest.approx([0.25, 0.25, 0.25, -1, 0.25])
    torch.testing.assert_close(t.sum(dim=1), torch.zeros(2))


def test_paper_loss_gradient_is_softmax_minus_target():
    z = torch.randn(4, 6, requires_grad=True)
    t = nhle_targets(torch.tensor([0, 1, 2, 5]), 6)
    nhle_loss(z, t, "paper").backward()
    torch.testing.assert_close(z.grad, (torch.softmax(z, 1) - t).detach() / 4)


def test_soft_ce_equals_pytorch_soft_target_cross_entropy_with_gradient_minus_target():
    z = torch.randn(3, 5, requires_grad=True)
    t = nhle_targets(torch.tensor([0, 4, 2]), 5)
    loss = nhle_loss(z, t, "soft-ce")
    torch.testing.assert_close(loss, F.cross_entropy(z, t))
    loss.backward()
    torch.testing.assert_close(z.grad, -t / 3)


@pytest.fixture(scope="module")
def digits_model(digits_weights):
    from nhle_pipeline.pipeline.checkpoint import load_weights
    from nhle_pipeline.pipeline.config import DataConfig
    from nhle_pipeline.pipeline.data import load_dataset, select_forget_indices
    from nhle_pipeline.pipeline.models import build_model

    ds = load_dataset(DataConfig())
    m = build_model("mlp", num_classes=10, input_shape=(1, 8, 8))
    load_weights(m, digits_weights)
    idx = select_forget_indices(ds.train.y, [0], 16, "first", 0)
    return m, ds, torch.from_numpy(ds.train.x[idx]), torch.from_numpy(ds.train.y[idx])


@pytest.mark.parametrize("variant", ["paper", "soft-ce"])
@pytest.mark.parametrize("lr, stop", [(0.01, 0.5), (0.1, 0.0)])
def test_finetune_stops_at_the_first_step_meeting_the_rule(digits_model, variant, lr, stop):
    m0, ds, x, y = digits_model
    m = copy.deepcopy(m0)
    r = nhle_finetune(m, x, y, 10, NHLEConfig(variant=variant, lr=lr, stop_forget_acc=stop))
    assert r.forget_acc_start == 1.0
    assert r.stopped == "forgotten" and r.forget_acc_end <= stop
    # one step fewer would not have met the rule
    m_short = copy.deepcopy(m0)
    short = nhle_finetune(m_short, x, y, 10, NHLEConfig(variant=variant, lr=lr, max_steps=r.steps - 1, stop_forget_acc=stop))
    assert short.stopped == "max_steps" and short.forget_acc_end > stop
    # retained test accuracy barely moves with so few steps
    keep = ds.test.y != 0
    with torch.no_grad():
        before = (m0(torch.from_numpy(ds.test.x[keep])).argmax(1).numpy() == ds.test.y[keep]).mean()
        after = (m(torch.from_numpy(ds.test.x[keep])).argmax(1).numpy() == ds.test.y[keep]).mean()
    assert after - before > -0.03


def test_divergence_keeps_last_finite_weights(digits_model):
    m0, _, x, y = digits_model
    m = copy.deepcopy(m0)
    cfg = NHLEConfig(variant="soft-ce", lr=1e30, grad_clip=None, stop_forget_acc=0.0, max_steps=50)
    r = nhle_finetune(m, x, y, 10, cfg)
    assert r.stopped == "diverged"
    assert all(torch.isfinite(p).all() for p in m.parameters())
    m = copy.deepcopy(m0)  # the relative step blows up the same way at an absurd rate
    r = nhle_finetune(m, x, y, 10, NHLEConfig(lr=1e30, max_steps=50))
    assert r.stopped == "diverged"
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_batchnorm_statistics_are_frozen():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    m.eval()
    x, y = torch.randn(6, 1, 2, 2), torch.zeros(6, dtype=torch.long)
    mean, var = m[2].running_mean.clone(), m[2].running_var.clone()
    never_stop = {"stop_forget_acc": -1.0}  # run all max_steps (not a valid user value)
    nhle_finetune(m, x, y, 3, NHLEConfig(max_steps=5).model_copy(update=never_stop))
    torch.testing.assert_close(m[2].running_mean, mean)
    torch.testing.assert_close(m[2].running_var, var)
    nhle_finetune(m, x, y, 3, NHLEConfig(max_steps=5, freeze_batchnorm=False).model_copy(update=never_stop))
    assert not torch.allclose(m[2].running_mean, mean)


def test_disabled_changes_nothing(digits_model):
    m0, _, x, y = digits_model
    m = copy.deepcopy(m0)
    r = nhle_finetune(m, x, y, 10, NHLEConfig(enabled=False))
    assert r.stopped == "disabled" and r.steps == 0
    assert np.array_equal(m.classifier.weight.detach().numpy(), m0.classifier.weight.detach().numpy())


def test_presets_fill_only_unset_settings():
    assert NHLEConfig().resolved()["variant"] == "anchored"
    for name, preset in NHLE_PRESETS.items():
        cfg = NHLEConfig(variant="anchored", retained_per_class=8) if name == "anchored-retained" else NHLEConfig(variant=name)
        assert cfg.preset_name() == name
        got = cfg.resolved()
        assert {k: got[k] for k in preset} == preset
    got = NHLEConfig(variant="paper", optimizer="relative", lr=0.002, anchor=1.0).resolved()
    assert (got["optimizer"], got["lr"], got["anchor"], got["stop_forget_acc"]) == ("relative", 0.002, 1.0, 0.5)


def test_anchor_loss_is_zero_at_the_original_and_ignores_forgotten_logits():
    z0 = torch.randn(4, 5)
    retained = retained_classes(torch.tensor([1, 1, 3, 3]), 5)
    assert retained.tolist() == [0, 2, 4]
    assert float(anchor_loss(z0, z0, retained)) == 0.0
    z = z0.clone()
    z[:, [1, 3]] -= 100.0  # the forgotten logits may move freely
    assert float(anchor_loss(z, z0, retained)) == 0.0
    z[:, 2] += 2.0  # one retained column moved by 2: mean over 3 columns of 4
    assert float(anchor_loss(z, z0, retained)) == pytest.approx(4.0 / 3)


def test_logit_margin_is_best_retained_minus_own():
    z = torch.tensor([[5.0, 1.0, 2.0], [0.0, 3.0, -1.0]])
    assert logit_margin(z, torch.tensor([0, 0]), torch.tensor([1, 2])).tolist() == [-3.0, 3.0]


def test_anchored_stops_at_half_and_keeps_retained_logits(digits_model):
    m0, ds, x, y = digits_model
    m = copy.deepcopy(m0)
    r = nhle_finetune(m, x, y, 10, NHLEConfig())  # the default: anchored
    assert r.settings["variant"] == "anchored" and r.stopped == "forgotten"
    assert r.settings["stop_forget_acc"] == 0.5 and r.settings["stop_margin"] is None
    retained = retained_classes(y, 10)
    with torch.no_grad():
        z0, z = m0(x), m(x)
    assert r.forget_acc_start == 1.0 and r.forget_acc_end <= 0.5 and r.steps > 1
    # one step fewer would not have met the rule
    short = nhle_finetune(copy.deepcopy(m0), x, y, 10, NHLEConfig(max_steps=r.steps - 1))
    assert short.stopped == "max_steps" and short.forget_acc_end > 0.5
    # the forgotten logit fell far more than any retained logit moved
    own_drop = float((z0.gather(1, y[:, None]) - z.gather(1, y[:, None])).mean())
    retained_move = float((z[:, retained] - z0[:, retained]).abs().mean())
    assert own_drop > 5 * retained_move
    # and the retained test accuracy holds (before CWM)
    keep = ds.test.y != 0
    with torch.no_grad():
        before = (m0(torch.from_numpy(ds.test.x[keep])).argmax(1).numpy() == ds.test.y[keep]).mean()
        after = (m(torch.from_numpy(ds.test.x[keep])).argmax(1).numpy() == ds.test.y[keep]).mean()
    assert after - before >= -0.01


def test_stopping_rules_must_all_hold(digits_model):
    m0, _, x, y = digits_model

    def run(**kw):
        return nhle_finetune(copy.deepcopy(m0), x, y, 10, NHLEConfig(**kw))

    half = run()  # the default: at most half the forget samples still top-1
    top1 = run(stop_margin=0.0)  # the weakest margin: no forget sample is top-1 any more
    assert top1.stopped == "forgotten" and top1.forget_acc_end == 0.0
    assert half.steps < top1.steps and half.forget_acc_end > 0.0
    far = run(stop_margin=5.0)  # 0.4's default push, with the default's half rule holding too
    assert far.steps > top1.steps
    # the accuracy rule (met from the step where the margin 0 holds) adds nothing to the margin 5
    assert run(stop_forget_acc=0.5, stop_margin=5.0).steps == far.steps


def test_retained_mode_uses_its_own_preset():
    cfg = NHLEConfig(retained_per_class=8)
    assert cfg.preset_name() == "anchored-retained"
    got = cfg.resolved()
    assert got["stop_margin"] is None and got["stop_margin_relative"] == 3.0 and got["max_steps"] == 300
    assert NHLEConfig(variant="paper", retained_per_class=8).preset_name() == "paper"


def test_retained_samples_hold_their_logits(digits_model):
    """Pushed to the same margin, the retained samples in the anchor keep their logits closer
    to the original's than without them; other retained test images benefit too."""
    m0, ds, x, y = digits_model
    from nhle_pipeline.pipeline.data import select_forget_indices

    keep = list(range(1, 10))
    xr = torch.from_numpy(ds.train.x[select_forget_indices(ds.train.y, keep, 8, "random", 0)])
    cfg = NHLEConfig(lr=1e-3, stop_margin=20.0, max_steps=300)
    alone, anchored = copy.deepcopy(m0), copy.deepcopy(m0)
    r_alone = nhle_finetune(alone, x, y, 10, cfg)
    r_anch = nhle_finetune(anchored, x, y, 10, cfg, retained_x=xr)
    assert r_alone.stopped == r_anch.stopped == "forgotten"
    test_r = torch.from_numpy(ds.test.x[ds.test.y != 0])
    with torch.no_grad():
        z0_train, z0_test = m0(xr)[:, keep], m0(test_r)[:, keep]
        drift = {name: (float((m(xr)[:, keep] - z0_train).abs().mean()), float((m(test_r)[:, keep] - z0_test).abs().mean()))
                 for name, m in (("alone", alone), ("anchored", anchored))}
    assert drift["anchored"][0] < 0.5 * drift["alone"][0]  # the anchored samples themselves
    assert drift["anchored"][1] < drift["alone"][1]  # and unseen retained test images


def test_relative_margin_is_measured_in_the_original_lead(digits_model):
    m0, _, x, y = digits_model
    retained = retained_classes(y, 10)
    with torch.no_grad():
        lead = original_lead(m0(x), y, retained)
    assert lead > 1.0  # a trained model: the own logit tops the others by more than 1
    m = copy.deepcopy(m0)
    r = nhle_finetune(m, x, y, 10, NHLEConfig(lr=1e-3, stop_margin=None, stop_margin_relative=1.0, max_steps=300))
    assert r.stopped == "forgotten"
    with torch.no_grad():
        margins = logit_margin(m(x), y, retained)
    assert bool((margins >= lead).all())
    # the same push measured in absolute logits: identical to stop_margin = lead
    same = nhle_finetune(copy.deepcopy(m0), x, y, 10, NHLEConfig(lr=1e-3, stop_margin=lead, max_steps=300))
    assert same.steps == r.steps


@pytest.mark.parametrize("variant", ["anchored", "paper"])
def test_micro_batches_take_the_same_steps_as_the_full_batch(variant):
    """Gradients summed over micro-batches of the forget samples: same stop, same weights."""
    import copy

    from nhle_pipeline.pipeline.config import NHLEConfig
    from nhle_pipeline.pipeline.nhle import micro_batch_for, nhle_finetune

    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.rand(16, 1, 8, 8)
    y = torch.zeros(16, dtype=torch.long)
    # anchored pushed to a margin: the untrained net barely predicts class 0, so the default's
    # half rule would hold at once and the test would compare no step at all
    cfg = NHLEConfig(variant=variant, max_steps=30, **({"stop_margin": 5.0} if variant == "anchored" else {}))
    runs = []
    for micro in (None, 4, 5):
        model = copy.deepcopy(base)
        result = nhle_finetune(model, x, y, 4, cfg, micro_batch=micro)
        runs.append((result, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (full, w_full), *chunked = runs
    for result, weights in chunked:
        assert (result.steps, result.stopped) == (full.steps, full.stopped)
        torch.testing.assert_close(weights, w_full, rtol=1e-5, atol=1e-6)
    assert full.steps > (1 if variant == "anchored" else 0)
    assert micro_batch_for((3, 224, 224)) == 4 and micro_batch_for((3, 32, 32)) == 256
    assert micro_batch_for((1, 8, 8)) >= 16


def test_micro_batches_cover_the_retained_samples_too():
    """The retained mode's anchor samples go through the micro-batches as well (their count, not
    the forget samples', can be the large one): the same stop and weights as one full batch,
    also when the forget samples fit in one micro-batch and only the retained ones are split."""
    import copy

    from nhle_pipeline.pipeline.config import NHLEConfig
    from nhle_pipeline.pipeline.nhle import nhle_finetune

    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    x, y = torch.rand(6, 1, 8, 8), torch.zeros(6, dtype=torch.long)
    retained_x = torch.rand(27, 1, 8, 8)  # 9 per retained class, as retained_per_class would pick
    cfg = NHLEConfig(max_steps=30, stop_margin=5.0, retained_per_class=9)
    runs = []
    for micro in (None, 8, 5):  # 8: x in one chunk, the retained samples in four
        model = copy.deepcopy(base)
        seen = []  # every forward's batch size: the memory bound the micro-batch promises
        model[0].register_forward_pre_hook(lambda _m, args, seen=seen: seen.append(len(args[0])))
        result = nhle_finetune(model, x, y, 4, cfg, retained_x=retained_x, micro_batch=micro)
        runs.append((result, torch.cat([p.detach().flatten() for p in model.parameters()])))
        assert max(seen) == (27 if micro is None else max(micro, len(x)))  # x: its no-grad passes
    (full, w_full), *chunked = runs
    assert full.steps > 1
    for result, weights in chunked:
        assert (result.steps, result.stopped) == (full.steps, full.stopped)
        torch.testing.assert_close(weights, w_full, rtol=1e-5, atol=1e-6)


def test_micro_batches_never_leave_one_sample_alone():
    """With freeze_batchnorm: false BatchNorm normalises each micro-batch; a last micro-batch of
    one sample would stop NHLE with 'Expected more than 1 value per channel'. It joins the one
    before it."""
    from nhle_pipeline.pipeline.config import NHLEConfig
    from nhle_pipeline.pipeline.nhle import micro_batches, nhle_finetune

    assert micro_batches(9, 4) == [slice(0, 4), slice(4, 9)]
    assert micro_batches(8, 4) == [slice(0, 4), slice(4, 8)]
    assert micro_batches(1, 4) == [slice(0, 1)]
    assert micro_batches(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.rand(9, 1, 8, 8), torch.zeros(9, dtype=torch.long)
    result = nhle_finetune(model, x, y, 4, NHLEConfig(freeze_batchnorm=False, max_steps=5, stop_margin=5.0),
                           micro_batch=4)
    assert result.steps == 5 and result.stopped == "max_steps"
