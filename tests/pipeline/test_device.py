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


def test_exact_fp32_turns_tf32_off_for_its_duration_and_restores_it():
    """The calibrated CWM bias is computed under exact_fp32 (verify recomputes it in fp32 with
    onnxruntime): TF32 is off inside, and the caller's settings are back afterwards, also after
    an exception."""
    from nhle_pipeline.pipeline.device import exact_fp32

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with exact_fp32():
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
        with pytest.raises(RuntimeError, match="boom"), exact_fp32():
            raise RuntimeError("boom")
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize(("local_rank", "gpus", "expected"), [(0, 1, 0), (3, 2, 1), (1, 4, 1), (2, 0, 0)])
def test_each_rank_takes_its_local_gpu_wrapped_over_the_gpus_it_sees(monkeypatch, local_rank, gpus, expected):
    """torchrun's LOCAL_RANK picks the GPU for PyTorch and onnxruntime; more ranks than GPUs share
    them instead of asking onnxruntime for a device that does not exist."""
    from nhle_pipeline.pipeline.distributed import Group

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert Group(rank=local_rank, world=8, local_rank=local_rank).gpu == expected
