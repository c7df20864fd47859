import pytest
import torch
from torch import nn

from nhle_pipeline.pipeline.relative_step import NORM_FLOOR, RelativeStep


def test_relative_step_moves_each_tensor_by_lr_times_its_norm():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    before = [p.detach().clone() for p in m.parameters()]
    m(torch.randn(8, 6)).pow(2).sum().backward()
    RelativeStep(m.parameters(), lr=0.01).step()
    for p0, p in zip(before, m.parameters(), strict=True):
        moved = float((p.detach() - p0).norm())
        assert moved == pytest.approx(0.01 * max(float(p0.norm()), 1e-2), rel=1e-4)


def test_step_is_along_minus_the_gradient_and_zero_tensors_use_the_floor():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # norm 5
    b = nn.Parameter(torch.zeros(2))  # norm 0: the floor applies
    w.grad = torch.tensor([0.0, 2.0])
    b.grad = torch.tensor([-1.0, 0.0])
    RelativeStep([w, b], lr=0.1).step()
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0 - 0.1 * 5.0]))
    torch.testing.assert_close(b.detach(), torch.tensor([0.1 * NORM_FLOOR, 0.0]))


def test_missing_or_zero_gradients_leave_the_tensor_alone():
    a, z = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    z.grad = torch.zeros(3)
    RelativeStep([a, z], lr=0.5).step()
    torch.testing.assert_close(a.detach(), torch.ones(3))
    torch.testing.assert_close(z.detach(), torch.ones(3))


def test_nan_gradient_is_not_skipped():
    p = nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([float("nan"), 1.0])
    RelativeStep([p], lr=0.1).step()
    assert torch.isnan(p.detach()).any()  # NHLE's divergence guard must get to see it


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan")])
def test_lr_must_be_positive(lr):
    with pytest.raises(ValueError, match="lr must be > 0"):
        RelativeStep([nn.Parameter(torch.ones(1))], lr=lr)
