"""What a config's DAG will cost before anything runs: per rule, the jobs a dry run plans, the GPU-hours of training and
sampling from the model's FLOP count, and the disk the results keep.

GPU-hours are estimates until measured: the forward FLOPs of the config's UNet at the dataset's resolution (counted
with ``torch.utils.flop_counter`` on the meta device: no weights, no data), three forward passes per training image,
one per model evaluation of a sampler, at an assumed sustained rate (``tflops``; measure yours with
``benchmarks/throughput.py``). Evaluation and reference jobs (Inception over the images, minutes each) and the tables
and figures are not estimated. Disk: uint8 sample shards; fp32 ``checkpoint.pt`` (model, EMA, Adam's two moments),
``ema.pt`` and the snapshots of every training run. Images have one channel for an embedded dataset (the digits) and
three for an image folder (prepared as RGB).
"""

from __future__ import annotations

import json
from collections import defaultdict
from functools import cache
from pathlib import Path

from p2core.respace import sampler_steps

#: the rules whose GPU time is estimated here
ESTIMATED_RULES = ("train", "sample")
BYTES_PER_PARAMETER = 4  # fp32


def planned_jobs(snakefile: Path, configfile: Path | None) -> tuple[list[tuple[str, dict, dict]], dict]:
    """(rule, wildcards, params) of every job a dry run of ``snakefile`` with ``configfile`` (None: the workflow's
    default) would start, and the config with its defaults filled in. The workflow's own checks run first: a config
    error stops as it stops a dry run."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    configs = [configfile] if configfile else []
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            snakefile=snakefile,
            config_settings=ConfigSettings(configfiles=configs),
        )
        dag = workflow.dag(DAGSettings())
        dag.workflow_api._workflow.dag_settings = dag.dag_settings
        internal = workflow._workflow
        internal._prepare_dag(forceall=False, ignore_incomplete=True, lock_warn_only=True)  # as --dry-run does
        internal._build_dag()
        jobs = list(internal.dag.needrun_jobs())
        return [(job.rule.name, dict(job.wildcards_dict), dict(job.params.items())) for job in jobs], internal.config


@cache
def forward_flops(model_json: str, resolution: int, channels: int) -> tuple[float, int]:
    """FLOPs of one forward pass of the UNet with flags ``model_json`` on one image, and its parameter count (meta
    device: nothing allocated)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from p2core.unet import create_model

    with torch.device("meta"):
        model = create_model(image_size=resolution, in_channels=channels, **json.loads(model_json))
        x, t = torch.zeros(1, channels, resolution, resolution), torch.zeros(1, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            model(x, t)
        parameters = sum(p.numel() for p in model.parameters())
    return float(counter.get_total_flops()), parameters


def cost_rows(jobs: list[tuple[str, dict, dict]], config: dict, tflops: float) -> list[dict]:
    """One row per rule (train and sample first, then by job count): jobs, GPU-hours (train and sample; None for the
    others) and disk in GB."""
    rows: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "gpu_hours": None, "disk_gb": 0.0})
    for rule, wildcards, params in jobs:
        row = rows[rule]
        row["jobs"] += 1
        if rule not in ESTIMATED_RULES:
            continue
        dataset = config["datasets"][wildcards["dataset"]]
        resolution, channels = dataset["resolution"], 1 if dataset["source"].startswith("embedded:") else 3
        flags = json.dumps(config["archs"][wildcards["arch"]]["model"], sort_keys=True)
        flops, parameters = forward_flops(flags, resolution, channels)
        if rule == "train":
            spec = json.loads(params["spec"])
            work = 3 * flops * spec["batch_size"] * spec["steps"]
            kept = 4 + 1 + len(spec.get("snapshot_steps", []))  # checkpoint.pt, ema.pt, the snapshots
            row["disk_gb"] += kept * parameters * BYTES_PER_PARAMETER / 1e9
        else:
            images = int(params["num"])
            work = flops * images * sampler_steps(wildcards["sampler"], config["num_timesteps"])
            row["disk_gb"] += images * resolution * resolution * channels / 1e9
        row["gpu_hours"] = (row["gpu_hours"] or 0.0) + work / (tflops * 1e12) / 3600
    order = sorted(rows, key=lambda rule: (rule not in ESTIMATED_RULES, -rows[rule]["jobs"], rule))
    return [{"rule": rule, **rows[rule]} for rule in order]


def format_cost(rows: list[dict], tflops: float) -> str:
    """The rows as a plain-text table with a total line and the assumption it rests on."""
    lines = [f"{'rule':<24}{'jobs':>8}{'GPU-hours':>12}{'disk GB':>10}"]
    for row in rows:
        hours = "-" if row["gpu_hours"] is None else f"{row['gpu_hours']:.1f}"
        disk = f"{row['disk_gb']:.1f}" if row["disk_gb"] else "-"
        lines.append(f"{row['rule']:<24}{row['jobs']:>8}{hours:>12}{disk:>10}")
    total_hours = sum(row["gpu_hours"] or 0.0 for row in rows)
    total_disk = sum(row["disk_gb"] for row in rows)
    total_jobs = sum(row["jobs"] for row in rows)
    lines.append(f"{'total':<24}{total_jobs:>8}{total_hours:>12.1f}{total_disk:>10.1f}")
    lines.append(
        f"GPU-hours of train and sample from the UNet's FLOP count at an assumed sustained {tflops:g} TFLOP/s "
        "(not measured: scale by benchmarks/throughput.py on your GPU); '-': not estimated (minutes each)"
    )
    return "\n".join(lines)
