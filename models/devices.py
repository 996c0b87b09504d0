"""Where the networks run: one resolver for training, inference and the Nipype node."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceError", "resolve_device"]


class DeviceError(ValueError):
    """A device was asked for that this machine does not have."""


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; a CUDA device asked for on a
    machine without one raises :class:`DeviceError`. (torch is imported here, not at module
    import: building a workflow should not load it.)"""
    import torch

    if isinstance(spec, torch.device):
        dev = spec
    elif spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {spec!s} was asked for, but no CUDA device is available")
    return dev
