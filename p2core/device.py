"""Where, in which precision and in which memory layout a step runs: the device (``auto``: CUDA when available), bf16
autocast where the hardware runs it natively, and channels_last where it was measured faster. Importing it does not
import torch (the workflow reads :data:`PRECISIONS` and :data:`LAYOUTS`).

Precisions: ``fp32`` is IEEE fp32 everywhere (on CUDA p2core switches TF32 off for matmuls *and* cuDNN convolutions,
which PyTorch otherwise runs in TF32 by default on Ampere and later); ``tf32`` is fp32 storage with TF32 matmuls and
convolutions (CUDA only); ``bf16`` is autocast to bfloat16; ``auto`` is resolved once, by whoever owns the result (a
training run at its first start, a sample set from its model), never per job."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from p2core.errors import P2Error

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "tf32", "bf16", "auto")
#: what a result is computed in (and recorded with): the precisions but ``auto``
RESOLVED_PRECISIONS = tuple(name for name in PRECISIONS if name != "auto")
#: values of a ``channels_last`` setting: ``auto`` takes :data:`CHANNELS_LAST_FASTER`, a boolean forces a layout
LAYOUTS = ("auto", True, False)
PHASES = ("train", "sample")

#: Whether channels_last (NHWC) is the layout to run, per device type and phase, from speedups over contiguous NCHW
#: measured in the same run (``benchmarks/throughput.py --quick``: small config, fp32, 2 threads, bf16 in brackets
#: where native; last column ``benchmarks/profile_step.py``: the embedded default's 16 px model, 1 thread):
#:
#: ======  ==================  ========================  ========================  ==========================
#: phase   EPYC, AVX2 only     Xeon: AVX2 cap / native   EPYC Zen 5: cap / native  Zen 5 cap, embedded model
#: ======  ==================  ========================  ========================  ==========================
#: train   0.97                1.07 / 1.03 (1.19)        1.04 / 1.15 (1.01)        0.94
#: sample  1.26                0.98 / 1.00 (1.43)        1.09 / 1.07 (1.11)        0.97
#: ======  ==================  ========================  ========================  ==========================
#:
#: Sampling: channels_last, the largest gain on the slowest CPU. Training: mixed within +-7%; channels_last is kept,
#: which keeps the embedded default's numbers as published. On CUDA channels_last is what cuDNN's tensor-core
#: convolutions take natively (``benchmarks/gpu_check.py`` measures both layouts). One fixed choice per device type,
#: not a measurement at run time: the layout changes how a convolution rounds, and the embedded default's numbers are
#: identical across machines only while every machine uses the same layout.
CHANNELS_LAST_FASTER = {
    ("cpu", "train"): True,
    ("cpu", "sample"): True,
    ("cuda", "train"): True,
    ("cuda", "sample"): True,
}


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux); empty where that file does not exist."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# oneDNN instruction-set caps (``ONEDNN_MAX_CPU_ISA``) under which it has no bf16 instructions and emulates bf16.
ISA_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def onednn_isa_cap() -> str | None:
    """The instruction-set cap oneDNN was given (``ONEDNN_MAX_CPU_ISA``, or its old name ``DNNL_MAX_CPU_ISA``),
    upper-cased; ``None`` when unset. Capping it to ``AVX2`` makes a newer CPU behave like an AVX2-only one."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return cap.strip().upper() if cap else None


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA GPU of compute capability 8.0 or newer, or a CPU with
    AVX512-BF16 or AMX-BF16 whose oneDNN is not capped below them (:func:`onednn_isa_cap`). Elsewhere bf16
    kernels are emulated and slower than fp32."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_capability(device)[0] >= 8
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags()) and onednn_isa_cap() not in ISA_CAPS_WITHOUT_BF16


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a step computes in on ``device``: ``auto`` -> ``bf16`` where the device computes bf16 natively
    (:func:`native_bf16`), else ``fp32``; ``tf32`` where the device is not CUDA is a :class:`P2Error`."""
    if precision not in PRECISIONS:
        raise P2Error(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "tf32" and device.type != "cuda":
        raise P2Error(f"precision tf32 runs only on CUDA, not on {device}; choose fp32 or bf16")
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def precision_context(precision: str, device: torch.device) -> torch.autocast:
    """Put ``device`` into ``precision`` (resolved by :func:`resolve_precision`) and return the autocast context to
    run under: on CUDA, TF32 for fp32 matmuls and convolutions set on for ``tf32`` and off otherwise (explicitly:
    never PyTorch's default); bf16 autocast for ``bf16``."""
    import torch

    resolved = resolve_precision(precision, device)
    if device.type == "cuda":
        mode = "tf32" if resolved == "tf32" else "ieee"
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolved == "bf16")


def use_channels_last(setting: bool | str, device: torch.device, phase: str) -> bool:
    """Whether ``phase`` (``train`` or ``sample``) runs in channels_last on ``device``: ``auto`` gives the measured
    choice of :data:`CHANNELS_LAST_FASTER` (contiguous for device types not in it), ``True``/``False`` force it."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; choose one of {', '.join(PHASES)}")
    check_layout(setting)
    return CHANNELS_LAST_FASTER.get((device.type, phase), False) if setting == "auto" else setting


def check_layout(setting: object) -> None:
    """A :class:`P2Error` unless ``setting`` is one of :data:`LAYOUTS` (a boolean, not 0 or 1)."""
    if not (setting == "auto" or isinstance(setting, bool)):
        raise P2Error(f"channels_last must be one of {', '.join(str(v).lower() for v in LAYOUTS)}, got {setting!r}")
