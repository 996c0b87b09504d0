"""The DISARM library: networks, losses, training and inference (torch, numpy, nibabel)."""
