"""Choosing the device to run on: CUDA, then Apple MPS, then the CPU, unless the user says otherwise."""

from __future__ import annotations

import os

import torch

from imaginairy.errors import InvalidInputError


def default_device(requested: str | None = None) -> torch.device:
    """`requested` (the settings' IMAGINAIRY_DEVICE; read from the environment when not given) if set, else the best
    accelerator present, else the CPU."""
    from imaginairy.settings import DEVICE_ENV, Settings

    requested = requested if requested is not None else Settings.from_environment().device
    if requested:
        return as_device(requested, source=DEVICE_ENV)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def as_device(device: torch.device | str, source: str = "device") -> torch.device:
    """`device` as a torch.device; InvalidInputError for a name torch does not know (e.g. "gpu")."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InvalidInputError(f"{source}={device!r} is not a torch device: use e.g. cpu, cuda, cuda:1 or mps") from e
    check_device_available(device, source)
    return device


def check_device_available(device: torch.device, source: str = "device") -> None:
    """InvalidInputError when `device` is a CUDA or MPS device this machine (or this torch build) does not have."""
    if device.type == "cuda" and not torch.cuda.is_available():
        missing = (
            "an NVIDIA GPU with its driver" if torch.version.cuda else f"a CUDA build of torch ({torch.__version__})"
        )
        raise InvalidInputError(f"{source}={str(device)!r}, but this machine has no usable CUDA device (it needs"
                                f" {missing}); use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InvalidInputError(f"{source}={str(device)!r}, but there are only {torch.cuda.device_count()} CUDA GPUs"
                                " (numbered from 0)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"{source}={str(device)!r}, but Apple MPS is not available here (it needs an Apple"
                                " Silicon Mac and a torch built with MPS); use cpu")


# CPU feature flags (Linux /proc/cpuinfo names) of native bfloat16 matrix arithmetic: x86 AVX512-BF16 / AMX, Arm BF16.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
CPUINFO = "/proc/cpuinfo"


def resolve_precision(precision: str, device: torch.device | str, cpuinfo_path: str | os.PathLike = CPUINFO) -> str:
    """The concrete precision ("full", "autocast", "bf16" or "fp16") for a requested one; "auto" picks bf16 where the
    hardware computes it natively (CUDA GPUs that support it, CPUs with AVX512-BF16 / AMX / Arm BF16), else full."""
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "full"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16(cpuinfo_path) else "full"
    return "full"


def cpu_has_native_bf16(cpuinfo_path: str | os.PathLike = CPUINFO) -> bool:
    """Whether the CPU's feature flags (the first `flags` / `Features` line of /proc/cpuinfo) name native bf16."""
    try:
        with open(cpuinfo_path, encoding="utf-8") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        return False
    names = set(flags.partition(":")[2].split())
    return any(flag in names for flag in NATIVE_BF16_CPU_FLAGS)
