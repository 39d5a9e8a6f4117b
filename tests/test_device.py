import pytest
import torch

from p2core import device
from p2core.errors import P2Error


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx2", "fma"})  # e.g. an AMD EPYC without AVX512-BF16
    assert device.resolve_precision("auto", cpu) == "fp32" and not device.native_bf16(cpu)
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert device.resolve_precision("auto", cpu) == "bf16"
    assert device.resolve_precision("fp32", cpu) == "fp32" and device.resolve_precision("bf16", cpu) == "bf16"


def test_an_isa_cap_below_bf16_makes_bf16_emulated(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16"})
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")  # how benchmarks/pipeline.py --isa avx2 stands in for an AVX2 CPU
    assert not device.native_bf16(cpu) and device.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert device.native_bf16(cpu)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX512_CORE")
    assert not device.native_bf16(cpu)


def test_channels_last_auto_takes_the_measured_choice_per_device_type_and_phase(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setitem(device.CHANNELS_LAST_FASTER, ("cpu", "train"), False)
    monkeypatch.setitem(device.CHANNELS_LAST_FASTER, ("cpu", "sample"), True)
    assert not device.use_channels_last("auto", cpu, "train") and device.use_channels_last("auto", cpu, "sample")
    assert device.use_channels_last(True, cpu, "train") and not device.use_channels_last(False, cpu, "sample")
    assert not device.use_channels_last("auto", torch.device("mps"), "sample")  # not measured: contiguous
    assert device.use_channels_last("auto", cuda, "train") == device.CHANNELS_LAST_FASTER[("cuda", "train")]
    with pytest.raises(P2Error, match="channels_last must be one of auto, true, false"):
        device.use_channels_last("yes", cpu, "train")
    with pytest.raises(ValueError, match="unknown phase"):
        device.use_channels_last("auto", cpu, "evaluate")
