import numpy as np
import torch
from torch import nn

from nhle_pipeline.pipeline.inference import torch_logits

CPU = torch.device("cpu")


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 5))


def test_batches_equal_one_forward_pass():
    m = net().eval()
    x = np.random.default_rng(0).random((23, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    for bs in (1, 4, 23, 100):
        got = torch_logits(m, x, bs, CPU)
        assert got.shape == (23, 5) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_runs_in_eval_mode_and_restores_the_training_flag():
    m = net().train()
    x = np.random.default_rng(1).random((50, 1, 8, 8), dtype=np.float32)
    a, b = torch_logits(m, x, 16, CPU), torch_logits(m, x, 16, CPU)
    np.testing.assert_array_equal(a, b)  # dropout off: deterministic
    assert m.training
    with torch.no_grad():
        np.testing.assert_allclose(a, m.eval()(torch.from_numpy(x)).numpy(), atol=1e-6)


def test_no_gradients_are_recorded():
    m = net().eval()
    torch_logits(m, np.zeros((3, 1, 8, 8), np.float32), 2, CPU)
    assert all(p.grad is None for p in m.parameters())


def test_half_precision_output_comes_back_as_float32():
    m = net().eval().to(torch.bfloat16)

    class Cast(nn.Module):
        def forward(self, x):
            return m(x.to(torch.bfloat16))

    out = torch_logits(Cast(), np.ones((2, 1, 8, 8), np.float32), 2, CPU)
    assert out.dtype == np.float32 and out.shape == (2, 5)


def test_empty_input_gives_an_empty_array():
    out = torch_logits(net(), np.zeros((0, 1, 8, 8), np.float32), 8, CPU)
    assert out.size == 0 and len(out) == 0
