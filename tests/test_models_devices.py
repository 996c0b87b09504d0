"""One device resolver for training, inference and the Nipype node."""

import pytest
import torch

from models.devices import DeviceError, resolve_device

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@no_gpu
@pytest.mark.parametrize("spec", ["cuda", "cuda:1", torch.device("cuda")])
def test_cuda_without_a_gpu_is_one_clear_error(spec):
    with pytest.raises(DeviceError, match="no CUDA device is available"):
        resolve_device(spec)


@no_gpu
def test_callers_turn_it_into_their_own_errors(tmp_path):
    from models.harmonize import HarmonizeError, Harmonizer
    from models.train import TrainingError, TrainOptions, train

    with pytest.raises(HarmonizeError, match="no CUDA"):
        Harmonizer.from_dir(None, device="cuda")
    with pytest.raises(TrainingError, match="no CUDA"):
        train([], [], TrainOptions(out_dir=tmp_path, device="cuda"))
