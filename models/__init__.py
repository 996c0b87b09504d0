"""The DISARM library: networks, losses, training and inference (torch, numpy, nibabel)."""

from pathlib import Path

#: The shipped default model (weights + model card); importing it needs no torch.
DEFAULT_MODEL_DIR = Path(__file__).parent / "weights" / "default"
