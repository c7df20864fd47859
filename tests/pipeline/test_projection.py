"""Feature projection (pipeline/projection.py): what the closed form guarantees by construction."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nhle_pipeline.pipeline.projection import (
    _mean_patch,
    forgotten_directions,
    layer_inputs,
    project_forgotten_directions,
)


@pytest.mark.parametrize("kw", [dict(kernel_size=3, padding=1), dict(kernel_size=5, stride=2),
                                dict(kernel_size=3, padding=2, dilation=2), dict(kernel_size=(3, 1), padding="same")])
def test_the_mean_patch_is_unfolds_mean(kw):
    conv = nn.Conv2d(3, 4, **kw)
    x = torch.randn(2, 3, 11, 9)
    pad = kw.get("padding", 0)
    if pad == "same":
        pad = ((conv.kernel_size[0] - 1) // 2, (conv.kernel_size[1] - 1) // 2)
    want = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=pad, stride=conv.stride).mean(2)
    assert torch.allclose(_mean_patch(x, conv), want, atol=1e-6)


def test_the_directions_are_outside_the_retained_span_and_orthonormal():
    torch.manual_seed(0)
    retained = torch.randn(40, 16)
    ry = torch.arange(40) % 4
    forget = torch.randn(6, 16) + 3.0
    u = forgotten_directions(forget, retained, ry, rank=2)
    protos = torch.stack([retained[ry == c].mean(0) for c in range(4)]).double()
    assert u.shape == (16, 2)
    assert torch.allclose(u.T @ u, torch.eye(2, dtype=u.dtype), atol=1e-10)
    assert (protos @ u).abs().max() < 1e-10  # the retained class means are untouched by the projection


def test_projection_keeps_the_retained_means_response_and_removes_the_forget_direction():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    original = copy.deepcopy(model)
    xr = torch.randn(30, 8)
    yr = torch.arange(30) % 2 + 1
    xf = torch.randn(4, 8) + 2.0
    r = project_forgotten_directions(model, xf, xr, yr, heads=["5"], num_forgotten=1)
    assert r.layers == ["1", "3"] and r.rank == 1 and not r.skipped
    # the first layer: its retained class means give the same output as before, exactly up to float
    means = torch.stack([xr[yr == c].mean(0) for c in (1, 2)])
    assert torch.allclose(model[1](means), original[1](means), atol=1e-5)
    # and the forget samples' own direction (outside the retained span) no longer reaches it
    u = forgotten_directions(layer_inputs(original, ["1"], xf, 8)["1"], xr, yr, 1)[:, 0].float()
    assert torch.allclose(model[1].weight @ u, torch.zeros(6), atol=1e-5)
    assert torch.equal(model[5].weight, original[5].weight)  # the head is CWM's, not this stage's


def test_grouped_convolutions_are_skipped_and_said():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    r = project_forgotten_directions(model, torch.randn(3, 2, 8, 8), torch.randn(10, 2, 8, 8),
                                     torch.arange(10) % 2 + 1, heads=["3"], num_forgotten=1)
    assert r.layers == ["0"] and r.skipped == ["1"]


def test_a_layer_the_forward_never_calls_is_skipped_and_said():
    """An auxiliary head unused in eval, attention's out_proj (called functionally): no inputs seen."""

    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.aux, self.head = nn.Linear(8, 6), nn.Linear(6, 3), nn.Linear(6, 3)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    r = project_forgotten_directions(Aux(), torch.randn(3, 8), torch.randn(10, 8), torch.arange(10) % 2 + 1,
                                     heads=["head"], num_forgotten=1)
    assert r.layers == ["body"] and r.skipped == ["aux"]
