"""Training and sampling speed of p2core on this machine, each setting against fp32 eager measured in the same run.

    .venv/bin/python benchmarks/throughput.py --quick     # small config, under two minutes on a 2-core CPU
    .venv/bin/python benchmarks/throughput.py             # + more timed steps and the 256 px paper model
    .venv/bin/python benchmarks/throughput.py --table4 results/table4.csv   # + time to ddpm50 quality per sampler
    .venv/bin/python benchmarks/throughput.py --quick --authors ../P2-weighting   # + the authors' code, same run

Prints one line per setting while it runs, then one JSON object: the device (GPU name, or CPU model and its vector
flags), whether bf16 is native, and per setting training img/s, sampling img/s (ddim50) and the speedup of each over
fp32 eager. Settings: fp32, fp32 channels_last, and where bf16 is native (AVX512-BF16/AMX or a GPU of compute
capability >= 8) bf16 and bf16 channels_last; on CUDA also ``torch.compile`` of the training step (its compile time
reported apart). Emulated bf16 is skipped and the JSON says why: it is slower than fp32 and takes minutes to measure.

Time to ddpm50 quality: with ``--table4`` (a Table 4 CSV of a finished run), for every sampler kind and objective the
fewest model evaluations whose FID is at or below that objective's ``ddpm50`` FID, and the speedup over ``ddpm50``
that gives (each step is one model evaluation, whatever the sampler), or "never" in the range measured.

Against the authors' code: with ``--authors DIR`` (an unpacked jychoi118/P2-weighting snapshot; nothing of it is
copied here) their training step and DDIM sampling are timed in the same run on the same small config in fp32, every
setting and theirs measured ``--rounds`` times (default 3) in turn and each taken at its median, and
``p2core_vs_authors`` gives p2core's speed over theirs per setting (training img/s; sampling per model evaluation);
the last line before the JSON gives it for fp32 with the layout the pipeline picks on this device
(``channels_last: auto``, :data:`p2core.device.CHANNELS_LAST_FASTER`).

Configs: *small* = 32 px RGB, 64 channels, channel_mult 1,2,2,2, 1 res block, attention at 16, learned sigma, P2
gamma=1, batch 16; *paper* = the authors' 256 px model (93.6 M parameters), batch 8.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

from p2core.device import PHASES, cpu_flags, native_bf16, use_channels_last
from p2core.objective import create_objective
from p2core.sampling import respaced, sample
from p2core.train import _update_ema, adamw
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
PAPER = dict(SMALL, image_size=256, num_channels=128, channel_mult="")
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, warmup: int, steps: int, device) -> tuple[float, float]:
    """Seconds of ``warmup`` calls of ``step`` (compilation, caches), then seconds per call over ``steps`` more."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return warmup_s, (time.perf_counter() - start) / steps


def describe(device) -> dict:
    if device.type == "cuda":
        return {"gpu": torch.cuda.get_device_name(device), "capability": list(torch.cuda.get_device_capability(device))}
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), None)
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "vector_flags": sorted(set(VECTOR_FLAGS) & cpu_flags()),
        "threads": torch.get_num_threads(),
    }


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            return handle.readlines()
    except OSError:
        return []


def setup(knobs, device, channels_last):
    torch.manual_seed(0)
    model = create_model(**knobs).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, create_objective({"weighting": "p2", "weighting_params": {"gamma": 1.0, "k": 1.0}})


def train_throughput(knobs, batch, device, precision, channels_last, steps, compiled=False, warmup=2) -> dict:
    """Training img/s of full steps (loss, backward, AdamW, EMA), timed after ``warmup`` steps."""
    model, objective = setup(knobs, device, channels_last)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = adamw(model.parameters(), 1e-4, 0.0, device)
    size = knobs["image_size"]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=fmt) * 2 - 1
    network = torch.compile(model) if compiled else model

    def step():
        t = torch.randint(1000, (batch,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = objective.losses(network, x, t)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _update_ema(ema, model, 0.9999)

    warmup_s, seconds = timed(step, warmup, steps, device)
    result = {"img_per_s": batch / seconds, "step_s": seconds}
    if compiled:
        result["compile_and_warmup_s"] = warmup_s
    return result


@torch.inference_mode()
def sample_throughput(knobs, count, device, precision, channels_last, evaluations) -> dict:
    """Sampling speed: seconds per model evaluation per image (``count`` images, ``evaluations`` DDIM steps), and
    img/s of ddim50 at that rate."""
    model, objective = setup(knobs, device, channels_last)
    model.eval()
    size = knobs["image_size"]
    shape = (count, 3, size, size)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        sample(respaced(objective.process, "2"), model, shape, "ddim", device=device)  # warm-up
        sync(device)
        start = time.perf_counter()
        sample(respaced(objective.process, str(evaluations)), model, shape, "ddim", device=device)
        sync(device)
    per_evaluation = (time.perf_counter() - start) / evaluations / count
    return {"s_per_evaluation_per_image": per_evaluation, "ddim50_img_per_s": 1 / (50 * per_evaluation)}


def authors_model(directory: str, knobs: dict, device, respacing: str = ""):
    """The authors' UNet and diffusion with the same flags (P2 gamma 1, k 1, learned sigma, fp32), built by their
    ``guided_diffusion.script_util`` imported from an unpacked jychoi118/P2-weighting snapshot at ``directory``
    (nothing of it is copied into this project)."""
    sys.path.insert(0, str(Path(directory).resolve()))
    try:
        from guided_diffusion import script_util
    except ImportError as error:
        raise SystemExit(
            f"--authors {directory}: no guided_diffusion package there ({error}); unpack the authors' repo"
        ) from None
    flags = script_util.model_and_diffusion_defaults()
    flags.update({key: value for key, value in knobs.items() if key in flags})
    flags.update(diffusion_steps=1000, noise_schedule="linear", p2_gamma=1.0, p2_k=1.0, timestep_respacing=respacing)
    torch.manual_seed(0)
    model, diffusion = script_util.create_model_and_diffusion(**flags)
    return model.to(device), diffusion


def authors_train_throughput(directory, knobs, batch, device, steps, warmup=2) -> dict:
    """The authors' training step as their TrainLoop runs it in fp32: their hybrid loss, backward, AdamW (torch's
    default implementation), their EMA update (parameter by parameter)."""
    model, diffusion = authors_model(directory, knobs, device)
    ema = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    size = knobs["image_size"]
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1

    def step():
        t = torch.randint(1000, (batch,), device=device)
        loss = diffusion.training_losses(model, x, t)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for target, source in zip(ema, model.parameters(), strict=True):
            target.mul_(0.9999).add_(source.detach(), alpha=1 - 0.9999)

    _, seconds = timed(step, warmup, steps, device)
    return {"img_per_s": batch / seconds, "step_s": seconds}


def authors_sample_throughput(directory, knobs, count, device, evaluations) -> dict:
    """The authors' DDIM sampling (``ddim_sample_loop``, respaced to ``evaluations`` steps), timed as
    :func:`sample_throughput` times p2core's."""
    size = knobs["image_size"]
    shape = (count, 3, size, size)
    with torch.no_grad():
        model, warm = authors_model(directory, knobs, device, "ddim2")
        warm.ddim_sample_loop(model.eval(), shape, clip_denoised=True, device=device)  # warm-up
        _, diffusion = authors_model(directory, knobs, device, f"ddim{evaluations}")
        sync(device)
        start = time.perf_counter()
        diffusion.ddim_sample_loop(model, shape, clip_denoised=True, device=device)
        sync(device)
    per_evaluation = (time.perf_counter() - start) / evaluations / count
    return {"s_per_evaluation_per_image": per_evaluation, "ddim50_img_per_s": 1 / (50 * per_evaluation)}


def time_to_ddpm50_quality(table4_csv: str) -> list[dict]:
    """Per objective and sampler kind: the fewest model evaluations reaching the objective's ddpm50 FID, and the
    sampling speedup over ddpm50 that gives (:func:`p2core.tables.evaluations_to_reach`)."""
    import pandas as pd

    from p2core.tables import evaluations_to_reach

    reach = evaluations_to_reach(pd.read_csv(table4_csv), "ddpm50")
    return json.loads(reach.to_json(orient="records"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few steps, small config only: under two minutes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--table4", help="a Table 4 CSV: report time to ddpm50 quality per sampler")
    parser.add_argument(
        "--authors", help="an unpacked jychoi118/P2-weighting snapshot: time the authors' code in the same run"
    )
    parser.add_argument("--rounds", type=int, help="measurements per setting, interleaved (default 3 with --authors)")
    args = parser.parse_args()
    device = torch.device(args.device)
    steps, evaluations, images = (3, 4, 8) if args.quick else (10, 10, 16)
    rounds = args.rounds or (3 if args.authors else 1)
    native = native_bf16(device)
    settings = [("fp32", False, False), ("fp32", True, False)]
    skipped = {}
    if native:
        settings += [("bf16", False, False), ("bf16", True, False)]
    else:
        skipped["bf16"] = "not native on this device (emulated bf16 is slower than fp32)"
    if device.type == "cuda":
        settings.append(("bf16" if native else "fp32", False, True))
    else:
        skipped["torch.compile"] = "CPU: minutes of compile time for no measured gain on the convolution-bound step"
    report = {"device": describe(device), "native_bf16": native, "torch": torch.__version__, "skipped": skipped}
    report["rounds"] = rounds
    measured: dict[str, dict[str, list]] = {}
    for _ in range(rounds):  # interleaved, so a drift of the machine's speed hits every setting alike
        for precision, channels_last, compiled in settings:
            name = precision + ("_channels_last" if channels_last else "") + ("_compile" if compiled else "")
            runs = measured.setdefault(name, {"train": [], "sample": []})
            runs["train"].append(train_throughput(SMALL, 16, device, precision, channels_last, steps, compiled))
            runs["sample"].append(sample_throughput(SMALL, images, device, precision, channels_last, evaluations))
            print(name, json.dumps({k: v[-1] for k, v in runs.items()}), flush=True)
        if args.authors:  # the code p2core reimplements, same config, fp32 eager, measured now: ratios, not absolutes
            runs = measured.setdefault("authors_fp32", {"train": [], "sample": []})
            runs["train"].append(authors_train_throughput(args.authors, SMALL, 16, device, steps))
            runs["sample"].append(authors_sample_throughput(args.authors, SMALL, images, device, evaluations))
            print("authors_fp32", json.dumps({k: v[-1] for k, v in runs.items()}), flush=True)
    results = {name: {phase: median(runs[phase]) for phase in runs} for name, runs in measured.items()}
    authors = results.pop("authors_fp32", None)
    base = results["fp32"]
    for result in results.values():
        result["train_speedup"] = result["train"]["img_per_s"] / base["train"]["img_per_s"]
        result["sample_speedup"] = (
            base["sample"]["s_per_evaluation_per_image"] / result["sample"]["s_per_evaluation_per_image"]
        )
    report["small"] = results
    report["pipeline_layout"] = {phase: use_channels_last("auto", device, phase) for phase in PHASES}
    if authors:
        report["authors_fp32"] = authors
        report["p2core_vs_authors"] = {
            name: {
                "train": r["train"]["img_per_s"] / authors["train"]["img_per_s"],
                "sample_per_evaluation": authors["sample"]["s_per_evaluation_per_image"]
                / r["sample"]["s_per_evaluation_per_image"],
            }
            for name, r in results.items()
        }
        print("p2core / authors (above 1: p2core faster)", json.dumps(report["p2core_vs_authors"]), flush=True)
        print("p2core fp32 as the pipeline runs it (layout per phase: auto):", json.dumps(as_pipeline(report)))
    if args.table4:
        report["time_to_ddpm50_quality"] = time_to_ddpm50_quality(args.table4)
    if not args.quick:
        report["paper_train_fp32"] = train_throughput(PAPER, 8, device, "fp32", False, steps=1, warmup=1)
    print(json.dumps(report, indent=2))


def median(results: list[dict]) -> dict:
    """The run with the median seconds among ``results`` (each one a timing dict), so its fields stay consistent."""
    key = "step_s" if "step_s" in results[0] else "s_per_evaluation_per_image"
    return sorted(results, key=lambda r: r[key])[len(results) // 2]


def as_pipeline(report: dict) -> dict:
    """p2core's speed over the authors' in fp32, with the layout the pipeline picks per phase (channels_last auto)."""
    layout = report["pipeline_layout"]
    ratios = report["p2core_vs_authors"]
    return {
        "train": ratios["fp32_channels_last" if layout["train"] else "fp32"]["train"],
        "sample_per_evaluation": ratios["fp32_channels_last" if layout["sample"] else "fp32"]["sample_per_evaluation"],
    }


if __name__ == "__main__":
    main()
