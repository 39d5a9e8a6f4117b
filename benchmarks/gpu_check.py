"""One prepared check for a lent GPU: what only a GPU can show, in one run of under 8 minutes, as a table and JSON.

    .venv/bin/python benchmarks/gpu_check.py                    # on a GPU: the 256 px paper model
    .venv/bin/python benchmarks/gpu_check.py --out check.json   # where the JSON goes (default: gpu_check.json)

Measures, on the paper's 93.6 M-parameter UNet at 256 px (batch 8):

* training img/s in fp32, TF32 and bf16 autocast, each with and without channels_last, and ``torch.compile`` of the
  fastest eager setting with its compile time;
* sampling img/s per sampler kind (ancestral, DDIM, DPM-Solver++(2M)) in fp32 and bf16;
* bf16 against fp32 samples from the same seeds (uint8 pixel differences: what bf16 sampling changes in a result);
* peak GPU memory of a training step at batch 8, whole and in microbatches of 2;
* NCCL DDP over two processes when two GPUs are present (img/s against one process);
* MFU: the counted FLOPs (``torch.utils.flop_counter``, training = 3x the forward) per second against the GPU's
  published dense peak for that precision, where the GPU is in :data:`PEAK_TFLOPS`.

On a machine without CUDA it runs a tiny version of the same code (a 16 px model, a few steps: under a minute) and
lists what it skipped and why; the test suite runs that. Numbers on a CPU say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from throughput import PAPER, sync, timed
from torch.utils.flop_counter import FlopCounterMode

from p2core.device import native_bf16, precision_context
from p2core.images import to_uint8
from p2core.objective import create_objective
from p2core.respace import SAMPLERS
from p2core.sampling import for_sampler, sample
from p2core.train import _update_ema, adamw
from p2core.unet import create_model

TINY = dict(PAPER, image_size=16, num_channels=32, channel_mult="1,2", attention_resolutions="8", num_head_channels=32)
#: published dense peaks in TFLOP/s: (fp32, tf32, bf16); MFU is reported only for these GPUs
PEAK_TFLOPS = {
    "H200": (67.0, 494.0, 989.0),
    "H100 80GB HBM3": (67.0, 494.0, 989.0),
    "A100": (19.5, 156.0, 312.0),
}


def model_and_objective(knobs: dict, device: torch.device, channels_last: bool):
    torch.manual_seed(0)
    model = create_model(**knobs).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, create_objective({"weighting": "p2", "weighting_params": {"gamma": 1.0, "k": 1.0}})


def forward_flops(knobs: dict, device: torch.device) -> float:
    """FLOPs of one forward pass for one image (counted, not estimated)."""
    model, _ = model_and_objective(knobs, device, False)
    x = torch.zeros(1, 3, knobs["image_size"], knobs["image_size"], device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.zeros(1, dtype=torch.long, device=device))
    return float(counter.get_total_flops())


def train_speed(knobs, batch, device, precision, channels_last, steps, compiled=False, microbatch=None) -> dict:
    """img/s of full training steps (hybrid loss, backward, fused AdamW, EMA) after two warm-up steps; peak memory."""
    mixed_precision = precision_context(precision, device)  # as training sets it: TF32 on only for tf32
    model, objective = model_and_objective(knobs, device, channels_last)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = adamw(model.parameters(), 2e-5, 0.0, device)
    network = torch.compile(model) if compiled else model
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    size = knobs["image_size"]
    x = (torch.rand(batch, 3, size, size, device=device) * 2 - 1).contiguous(memory_format=fmt)
    chunk = microbatch or batch

    def step():
        t = torch.randint(1000, (batch,), device=device)
        optimizer.zero_grad(set_to_none=True)
        for start in range(0, batch, chunk):
            with mixed_precision:
                losses = objective.losses(network, x[start : start + chunk], t[start : start + chunk])
            (losses["loss"].sum() / batch).backward()
        optimizer.step()
        _update_ema(ema, model, 0.9999)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup_s, seconds = timed(step, 2, steps, device)
    result = {"img_per_s": batch / seconds, "step_s": seconds}
    if compiled:
        result["compile_and_warmup_s"] = warmup_s
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


@torch.inference_mode()
def draw(knobs, device, precision, sampler, count, seed=0) -> tuple[torch.Tensor, float]:
    """``count`` images from one seed per image with ``sampler``, and the seconds it took. The network's weights are
    perturbed (seeded) so that its output, zero at ADM's initialisation, shapes the samples."""
    model, objective = model_and_objective(knobs, device, False)
    for parameter in model.parameters():
        parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)).to(device))
    kind, process = for_sampler(objective.process, sampler)
    generators = [torch.Generator(device).manual_seed(seed * 100_000 + i) for i in range(count)]
    shape = (count, 3, knobs["image_size"], knobs["image_size"])
    sync(device)
    start = time.perf_counter()
    with precision_context(precision, device):
        x = sample(process, model.eval(), shape, kind, generator=generators, device=device)
    sync(device)
    return x, time.perf_counter() - start


def _ddp_worker(rank: int, world: int, knobs: dict, batch: int, steps: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    model, objective = model_and_objective(knobs, device, False)
    wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank])
    optimizer = adamw(model.parameters(), 2e-5, 0.0, device)
    x = torch.rand(batch, 3, knobs["image_size"], knobs["image_size"], device=device) * 2 - 1
    for i in range(steps + 2):
        if i == 2:
            sync(device)
            start = time.perf_counter()
        t = torch.randint(1000, (batch,), device=device)
        with precision_context("bf16", device):
            loss = objective.losses(wrapped, x, t)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    if rank == 0:
        Path(out).write_text(json.dumps({"img_per_s": world * batch * steps / (time.perf_counter() - start)}))
    dist.destroy_process_group()


def ddp_speed(knobs, batch, steps) -> dict:
    out = Path(f".gpu_check_ddp_{os.getpid()}.json")
    mp.spawn(_ddp_worker, args=(2, knobs, batch, steps, 29500 + os.getpid() % 1000, str(out)), nprocs=2, join=True)
    result = json.loads(out.read_text())
    out.unlink()
    return result


def peak_for(name: str) -> tuple[float, float, float] | None:
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def run(device: torch.device) -> dict:
    gpu = device.type == "cuda"
    knobs, batch, steps, evaluations, count = (PAPER, 8, 5, 10, 8) if gpu else (TINY, 4, 1, 3, 2)
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    native = native_bf16(device)
    report = {"device": name, "torch": torch.__version__, "model": knobs, "batch": batch, "skipped": {}}
    skipped = report["skipped"]
    precisions = ["fp32"] + (["tf32"] if gpu else []) + (["bf16"] if native else [])
    if not gpu:
        skipped["tf32"] = "no CUDA: TF32 is a GPU tensor-core mode"
        skipped["torch.compile"] = "no CUDA: compile time for nothing the GPU check needs"
        skipped["peak memory"] = "no CUDA: GPU memory"
        skipped["NCCL DDP"] = "no CUDA"
    if not native:
        skipped["bf16"] = "not native on this device (emulated bf16 is slower than fp32)"
    report["forward_gflop_per_image"] = forward_flops(knobs, device) / 1e9
    train = report["train"] = {}
    for precision in precisions:
        for channels_last in (False, True):
            key = precision + ("_channels_last" if channels_last else "")
            train[key] = train_speed(knobs, batch, device, precision, channels_last, steps)
            print(f"train {key}: {train[key]['img_per_s']:.2f} img/s", flush=True)
    if gpu:
        fastest = max(train, key=lambda k: train[k]["img_per_s"])
        precision = fastest.split("_")[0]
        train[f"{fastest}_compile"] = train_speed(
            knobs, batch, device, precision, fastest.endswith("channels_last"), steps, compiled=True
        )
        report["memory"] = {
            "whole_batch_gib": train_speed(knobs, batch, device, precision, False, 1)["peak_memory_gib"],
            "microbatch_2_gib": train_speed(knobs, batch, device, precision, False, 1, microbatch=2)["peak_memory_gib"],
        }
        if torch.cuda.device_count() >= 2:
            one = train_speed(knobs, batch, device, "bf16" if native else "fp32", False, steps)["img_per_s"]
            two = ddp_speed(knobs, batch, steps)["img_per_s"]
            report["ddp"] = {"one_process_img_per_s": one, "two_processes_img_per_s": two, "scaling": two / one}
        else:
            skipped["NCCL DDP"] = f"{torch.cuda.device_count()} GPU(s); needs 2"
    peak = peak_for(name)
    if peak is not None:
        index = {"fp32": 0, "tf32": 1, "bf16": 2}
        for key, result in train.items():
            achieved = 3 * report["forward_gflop_per_image"] * 1e9 * result["img_per_s"]
            result["achieved_tflops"] = achieved / 1e12
            result["mfu"] = achieved / (peak[index[key.split("_")[0]]] * 1e12)
    else:
        skipped["MFU"] = f"no published peak for {name!r} in PEAK_TFLOPS"
    sampling = report["sampling"] = {}
    for precision in ["fp32"] + (["bf16"] if native else []):
        draw(knobs, device, precision, "ddim2", count)  # warm-up: kernels chosen, caches filled
    for kind in SAMPLERS:
        sampler = f"{kind}{evaluations}"
        for precision in ["fp32"] + (["bf16"] if native else []):
            images, seconds = draw(knobs, device, precision, sampler, count)
            sampling[f"{sampler}_{precision}"] = {"img_per_s": count / seconds, "evaluations": evaluations}
            if precision == "bf16":
                reference, _ = draw(knobs, device, "fp32", sampler, count)
                difference = abs(to_uint8(images).astype(int) - to_uint8(reference).astype(int))
                sampling[f"{sampler}_bf16"]["vs_fp32_uint8"] = {
                    "max": int(difference.max()),
                    "mean": float(difference.mean()),
                    "share_changed": float((difference > 0).mean()),
                }
            print(f"sample {sampler} {precision}: {sampling[f'{sampler}_{precision}']['img_per_s']:.3f} img/s")
    return report


def table(report: dict) -> str:
    head = (
        f"device: {report['device']} (torch {report['torch']}), "
        f"forward {report['forward_gflop_per_image']:.1f} GFLOP/image, batch {report['batch']}"
    )
    lines = [head, "", "| training | img/s | TFLOP/s | MFU |", "|---|---|---|---|"]
    for key, result in report["train"].items():
        tflops = f"{result['achieved_tflops']:.1f}" if "achieved_tflops" in result else "-"
        mfu = f"{result['mfu']:.1%}" if "mfu" in result else "-"
        lines.append(f"| {key} | {result['img_per_s']:.2f} | {tflops} | {mfu} |")
    lines += ["", "| sampling | img/s | bf16 vs fp32 (uint8 max / mean) |", "|---|---|---|"]
    for key, result in report["sampling"].items():
        versus = result.get("vs_fp32_uint8")
        agreement = f"{versus['max']} / {versus['mean']:.3f}" if versus else "-"
        lines.append(f"| {key} | {result['img_per_s']:.3f} | {agreement} |")
    for key, value in report.get("memory", {}).items():
        lines.append(f"peak memory {key}: {value:.2f} GiB")
    if "ddp" in report:
        lines.append(f"DDP 2 processes: {report['ddp']['scaling']:.2f}x one process")
    lines += [f"skipped {key}: {why}" for key, why in report["skipped"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json", help="JSON file for every figure")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    start = time.perf_counter()
    report = run(torch.device(args.device))
    report["wall_s"] = time.perf_counter() - start
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"wrote {args.out} ({report['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
