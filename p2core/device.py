"""Where and in which precision a step runs: the device (``auto``: CUDA when available) and bf16 autocast where the
hardware runs it natively."""

from __future__ import annotations

import torch

PRECISIONS = ("fp32", "bf16", "auto")


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on a bf16-capable GPU or a CPU with native bf16 (AVX512-BF16/AMX), else ``fp32``."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context for ``precision`` (``fp32``, ``bf16`` or ``auto``, resolved for ``device``)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve_precision(precision, device) == "bf16")
