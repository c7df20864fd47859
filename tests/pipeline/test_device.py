import pytest
import torch

from nhle_pipeline.pipeline.device import resolve_device, seed_everything
from nhle_pipeline.pipeline.errors import InputError


def test_cpu_is_always_cpu():
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("cuda", [True, False])
def test_auto_follows_what_pytorch_sees(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device("auto") == torch.device("cuda" if cuda else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_cuda_is_an_input_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="device: 'cuda' requested, but PyTorch sees no CUDA device"):
        resolve_device("cuda")


def test_cuda_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda") == torch.device("cuda")


def test_seed_everything_makes_torch_draws_repeat():
    seed_everything(123)
    a = torch.rand(5)
    b = torch.nn.Linear(4, 3).weight.detach().clone()
    seed_everything(123)
    torch.testing.assert_close(torch.rand(5), a)
    torch.testing.assert_close(torch.nn.Linear(4, 3).weight.detach(), b)
    seed_everything(124)
    assert not torch.equal(torch.rand(5), a)
