"""Where one training step and one sampling step spend their time, by operator: the profile behind the speed choices.

    .venv/bin/python benchmarks/profile_step.py            # embedded default's model, fp32, 1 thread (as a job)
    .venv/bin/python benchmarks/profile_step.py --config small --threads 2

For each phase (a training step as ``p2core.train`` runs it: loss, backward, fused AdamW, EMA; a sampling step as
``p2core.sampling`` runs it: one model evaluation under inference mode and the ancestral update) it prints the share
of time per operator group (convolution, normalisation, activation, attention, optimizer and EMA, copies and layout,
everything else), the counted FLOPs and what the whole step reaches in GFLOP/s, in both memory layouts, then one JSON
object. Configs: *embedded* = ``config/config.yaml``'s Table 1 model and its training and sampling batches (read
from the file: 16 px greyscale, 32 channels, batch 32 and 100 today); *small* = ``benchmarks/throughput.py``'s
(32 px RGB, 64 channels, batch 16).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections import Counter
from pathlib import Path

import torch
import yaml
from throughput import SMALL
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from p2core.objective import create_objective
from p2core.sampling import respaced
from p2core.train import _update_ema, adamw
from p2core.unet import create_model, with_geometry

ROOT = Path(__file__).resolve().parents[1]


def embedded() -> tuple[dict, int, int]:
    """The embedded default's Table 1 model (its arch's flags, the dataset's size, greyscale digits: 1 channel),
    training batch and sampling batch, read from ``config/config.yaml``."""
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    dataset = config["datasets"][config["table1"]["datasets"][0]]
    model = config["archs"][config["table1"]["arch"]]["model"]
    knobs = with_geometry(model, dataset["resolution"], 1, learn_sigma=True)
    return knobs, config["train"]["batch_size"], config["sampling"]["batch_size"]


CONFIGS = {"embedded": embedded, "small": lambda: (SMALL, 16, 16)}  # knobs, training batch, sampling batch
#: operator groups, first match wins: substrings of aten operator names
GROUPS = (
    ("convolution", ("convolution", "conv2d", "conv1d")),
    ("normalisation", ("group_norm",)),
    ("activation", ("silu",)),
    ("attention", ("attention", "bmm", "softmax", "baddbmm")),
    ("optimizer and EMA", ("adam", "lerp", "zero_")),
    ("copies and layout", ("copy", "contiguous", "clone", "cat", "to_copy", "empty", "resize", "as_strided")),
)


def group_of(name: str) -> str:
    return next((group for group, keys in GROUPS if any(key in name for key in keys)), "other")


def steps(knobs: dict, train_batch: int, sample_batch: int, channels_last: bool):
    """``(train_step, sample_step)`` closures on fresh state in the given layout."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = create_model(**knobs).to(memory_format=fmt)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = adamw(model.parameters(), 4e-4, 0.0, torch.device("cpu"))
    objective = create_objective({"weighting": "p2", "weighting_params": {"gamma": 1.0, "k": 1.0}})
    process = respaced(objective.process, "50")
    size, channels = knobs["image_size"], knobs.get("in_channels", 3)
    x = (torch.rand(train_batch, channels, size, size) * 2 - 1).contiguous(memory_format=fmt)
    x_t = torch.randn(sample_batch, channels, size, size)

    def train_step():
        t = torch.randint(1000, (train_batch,))
        loss = objective.losses(model, x, t)["loss"].sum() / train_batch
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _update_ema(ema, model, 0.995, 10)

    def sample_step():
        with torch.inference_mode():
            t = torch.full((sample_batch,), 25)
            out = process.p_mean_variance(process.call_model(ema.eval(), x_t, t), x_t, t)
            return out["mean"] + torch.exp(0.5 * out["log_variance"]) * torch.randn_like(x_t)

    return train_step, sample_step


def measure(step, repeats: int) -> dict:
    """Seconds per step, FLOPs per step and the share of time per operator group (self CPU time)."""
    for _ in range(2):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    seconds = (time.perf_counter() - start) / repeats
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    groups = Counter()
    for event in prof.key_averages():
        groups[group_of(event.key)] += event.self_cpu_time_total
    total = sum(groups.values())
    flops = counter.get_total_flops()
    return {
        "step_s": round(seconds, 4),
        "gflop": round(flops / 1e9, 3),
        "gflop_per_s": round(flops / seconds / 1e9, 1),
        "share": {group: round(value / total, 3) for group, value in groups.most_common()},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="embedded")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (a pipeline job uses 1)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    knobs, train_batch, sample_batch = CONFIGS[args.config]()
    report = {"config": args.config, "threads": args.threads, "train_batch": train_batch, "sample_batch": sample_batch}
    for layout in ("contiguous", "channels_last"):
        train_step, sample_step = steps(knobs, train_batch, sample_batch, layout == "channels_last")
        for phase, step in (("train", train_step), ("sample", sample_step)):
            report[f"{phase}_{layout}"] = result = measure(step, args.repeats)
            print(f"{phase:6} {layout:13}", json.dumps(result), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
