import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import NHLEConfig
from pipeline.nhle import nhle_finetune, nhle_loss, nhle_targets


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
    from pipeline.checkpoint import load_weights
    from pipeline.config import DataConfig
    from pipeline.data import load_dataset, select_forget_indices
    from pipeline.models import build_model

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
    r = nhle_finetune(m, x, y, 10, NHLEConfig(lr=1e30, grad_clip=None, stop_forget_acc=0.0, max_steps=50))
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
