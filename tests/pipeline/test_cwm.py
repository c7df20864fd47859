import pytest
import torch
from torch import nn

from nhle_pipeline.pipeline.cwm import apply_cwm
from nhle_pipeline.pipeline.errors import ModelError


def head():
    torch.manual_seed(0)
    return nn.Linear(4, 5)


@pytest.mark.parametrize("mode, bias", [("zero", 0.0), ("suppress", -1e4)])
def test_masks_only_forgotten_rows(mode, bias):
    h = head()
    w0, b0 = h.weight.detach().clone(), h.bias.detach().clone()
    apply_cwm(h, [1, 3], mode, -1e4)
    assert torch.all(h.weight[[1, 3]] == 0)
    assert h.bias[[1, 3]].tolist() == [bias, bias]
    torch.testing.assert_close(h.weight[[0, 2, 4]], w0[[0, 2, 4]])
    torch.testing.assert_close(h.bias[[0, 2, 4]], b0[[0, 2, 4]])


def test_suppress_means_never_top1():
    h = head()
    apply_cwm(h, [2], "suppress", -1e4)
    logits = h(torch.randn(1000, 4) * 50)
    assert not (logits.argmax(1) == 2).any()


def test_none_is_a_no_op_and_suppress_needs_bias():
    h = head()
    w0 = h.weight.detach().clone()
    apply_cwm(h, [0], "none", -1e4)
    torch.testing.assert_close(h.weight, w0)
    with pytest.raises(ModelError, match="needs a head with a bias"):
        apply_cwm(nn.Linear(4, 5, bias=False), [0], "suppress", -1e4)


def test_calibrated_bias_sits_a_margin_below_the_lowest_retained_logit():
    import numpy as np

    from nhle_pipeline.pipeline.cwm import MIN_MARGIN, calibrated_bias, masked_bias

    logits = np.array([[-3.0, 2.0], [1.0, 7.0], [np.nan, 0.5]], dtype=np.float32)
    cal = calibrated_bias(logits)
    assert cal.lowest_retained_logit == -3.0 and cal.highest_retained_logit == 7.0
    assert cal.margin == MIN_MARGIN and cal.bias == -4.0 and cal.samples == 3
    wide = calibrated_bias(np.array([[-50.0, 50.0]], dtype=np.float32))
    assert wide.margin == 10.0 and wide.bias == -60.0  # a tenth of the spread
    assert masked_bias("calibrated", -1e4, cal) == -4.0
    assert masked_bias("suppress", -1e4, None) == -1e4
    assert masked_bias("zero", -1e4, None) == 0.0 and masked_bias("none", -1e4, None) is None
