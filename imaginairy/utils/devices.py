"""Choosing the device to run on: CUDA, then Apple MPS, then the CPU, unless the user says otherwise."""

from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    """`IMAGINAIRY_DEVICE` if set, else the best accelerator present, else the CPU."""
    if requested := os.environ.get("IMAGINAIRY_DEVICE"):
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
