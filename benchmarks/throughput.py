"""Training and sampling throughput of p2core on this machine; prints one JSON object.

    .venv/bin/python benchmarks/throughput.py            # small config, fp32 and bf16, + paper config
    .venv/bin/python benchmarks/throughput.py --no-paper # small config only (about a minute on 2 CPU threads)

Configs (issue 2): *small* = 32 px RGB, 64 channels, channel_mult 1,2,2,2, 1 res block, attention at 16, 64 head
channels, BigGAN up/down, scale-shift norm, learned sigma, P2 gamma=1, batch 16, sampling 16 images with ddim50;
*paper* = the authors' 256 px model (93.6 M parameters), batch 8. Achieved GFLOP/s (FLOPs of one training step
counted by ``torch.utils.flop_counter``, divided by its time) is set against a matmul peak measured in the same run.
Reference on 2 CPU threads, fp32 (the authors' code): small trains ~35 img/s, samples ~2.3 img/s; paper ~0.12 img/s.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from p2core.diffusion import create_diffusion
from p2core.train import _update_ema
from p2core.unet import create_model

SMALL = dict(
    image_size=32,
    num_channels=64,
    channel_mult="1,2,2,2",
    num_res_blocks=1,
    attention_resolutions="16",
    num_head_channels=64,
    resblock_updown=True,
    use_scale_shift_norm=True,
    learn_sigma=True,
)
PAPER = dict(
    image_size=256,
    num_channels=128,
    channel_mult="",
    num_res_blocks=1,
    attention_resolutions="16",
    num_head_channels=64,
    resblock_updown=True,
    use_scale_shift_norm=True,
    learn_sigma=True,
)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype, size=2048, repeats=10) -> float:
    """GFLOP/s of square matmuls: the practical peak this process can reach."""
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def setup(knobs, device, channels_last):
    torch.manual_seed(0)
    model = create_model(**knobs).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    diffusion = create_diffusion(weighting="p2", weighting_params={"gamma": 1.0, "k": 1.0})
    return model, diffusion


def train_throughput(knobs, batch, device, precision, channels_last, steps, warmup=2) -> dict:
    model, diffusion = setup(knobs, device, channels_last)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size = knobs["image_size"]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=fmt) * 2 - 1

    def step():
        t = torch.randint(1000, (batch,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = diffusion.training_losses(model, x, t)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _update_ema(ema, model, 0.9999)

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    return {
        "img_per_s": batch / seconds,
        "step_s": seconds,
        "gflop_per_step": counter.get_total_flops() / 1e9,
        "achieved_gflop_s": counter.get_total_flops() / seconds / 1e9,
    }


@torch.inference_mode()
def sample_throughput(knobs, count, device, precision, channels_last, sampler="ddim50") -> dict:
    model, diffusion = setup(knobs, device, channels_last)
    model.eval()
    process = diffusion.respaced(sampler)
    size = knobs["image_size"]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        process.respaced("ddim2").sample(model, (count, 3, size, size), "ddim", device=device)  # warm-up
        sync(device)
        start = time.perf_counter()
        process.sample(model, (count, 3, size, size), "ddim", device=device)
        sync(device)
    return {"img_per_s": count / (time.perf_counter() - start), "sampler": sampler, "images": count}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-paper", action="store_true", help="skip the 256 px paper config")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (small config)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported() or device.type == "cpu"
    settings = [("fp32", False), ("fp32", True)] + ([("bf16", False), ("bf16", True)] if bf16_ok else [])
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "matmul_peak_gflop_s": {"fp32": matmul_peak(device, torch.float32)},
        "small": {},
        "paper": {},
    }
    if bf16_ok:
        report["matmul_peak_gflop_s"]["bf16"] = matmul_peak(device, torch.bfloat16)
    for precision, channels_last in settings:
        name = f"{precision}{'_channels_last' if channels_last else ''}"
        report["small"][name] = {
            "train": train_throughput(SMALL, 16, device, precision, channels_last, args.steps),
            "sample": sample_throughput(SMALL, 16, device, precision, channels_last),
        }
        print(name, json.dumps(report["small"][name]), flush=True)
    if not args.no_paper:
        for precision in ("fp32", "bf16") if bf16_ok else ("fp32",):
            report["paper"][precision] = train_throughput(PAPER, 8, device, precision, False, steps=1, warmup=0)
            print("paper", precision, json.dumps(report["paper"][precision]), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
