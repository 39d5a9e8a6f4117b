"""One embedded-default recipe, trained and sampled once: does it draw digits, and what does it cost?

    .venv/bin/python benchmarks/recipe.py --steps 1600 --resolution 8 --samplers dpmpp2m10 ddpm50
    .venv/bin/python benchmarks/recipe.py --objective p2 --lr 1e-3 --channels 64 --out /tmp/recipes

Starts from ``config/config.yaml`` (its Table 1 arch, ``train`` section, objectives, sampling seed and sample count)
with the given settings changed, trains one run (seed 0, fp32, one thread, as a pipeline job), draws the sample set
with each sampler and scores it against the embedded digits at that resolution with the pipeline's own metrics: FID
(domain features), improved precision and recall, and the recognisable fraction (the digit classifier's
max-probability > 0.9), beside the real digits' own values. Prints one JSON object (training and sampling seconds
on this machine: convert them with ``benchmarks/throughput.py --quick``'s calibration figure) and appends it to
``<out>/recipes.jsonl``. The prepared data, the classifier and the reference statistics per resolution are kept in
``--out`` and reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from p2core.data import load_prepared
from p2core.features import train_domain_classifier
from p2core.metrics import evaluate_samples, read_reference, write_reference
from p2core.prepare import prepare_embedded
from p2core.sample import draw_shard
from p2core.train import TrainSpec, train

CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"


def prepared(out: Path, resolution: int, config: dict) -> tuple[Path, Path]:
    """The digits at ``resolution`` and their domain reference statistics, made once in ``out``."""
    data, classifier, reference = (out / f"{name}{resolution}" for name in ("digits", "domain", "reference"))
    if not (data / "meta.json").exists():
        prepare_embedded("digits", data, resolution)
    if not classifier.with_suffix(".pt").exists():
        images = load_prepared(data)
        epochs = config["evaluation"]["domain_features"]["epochs"]
        train_domain_classifier(np.array(images.images), images.labels, classifier.with_suffix(".pt"), epochs=epochs)
    if not reference.with_suffix(".npz").exists():
        write_reference(
            data,
            reference.with_suffix(".npz"),
            "domain",
            domain_weights=classifier.with_suffix(".pt"),
            floor_size=config["sampling"]["num_samples"],
            kid_subset_size=config["evaluation"]["kid_subset_size"],
        )
    return data, reference.with_suffix(".npz")


def recipe_spec(config: dict, args) -> dict:
    """Table 1's run spec from the config, with the recipe's settings changed (fp32: identical on every CPU)."""
    arch = config["archs"][config["table1"]["arch"]]
    train_section = {k: v for k, v in config["train"].items() if k not in ("resources", "snapshot_steps")}
    changes = {"steps": args.steps, "batch_size": args.batch, "lr": args.lr, "ema_rate": args.ema_rate}
    spec = {**train_section, **{k: v for k, v in changes.items() if v is not None}, "precision": "fp32"}
    model = {**arch["model"], **({"num_channels": args.channels} if args.channels else {})}
    diffusion = {"schedule": config["schedule"], "num_timesteps": config["num_timesteps"]}
    return {**spec, "model": model, "diffusion": {**diffusion, **config["objectives"][args.objective]}, "seed": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objective", default="baseline", help="an objective of config/config.yaml")
    parser.add_argument("--resolution", type=int, help="px (default: the config's)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--ema-rate", type=float)
    parser.add_argument("--channels", type=int, help="base channels of the UNet (a multiple of 32)")
    parser.add_argument("--samplers", nargs="+", default=None, help="default: the config's sampling.sampler")
    parser.add_argument("--out", default="results/recipes", help="where runs, data and the JSONL log go")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load(CONFIG.read_text())
    resolution = args.resolution or config["datasets"]["digits"]["resolution"]
    out = Path(args.out)
    data, reference = prepared(out, resolution, config)
    spec = recipe_spec(config, args)
    name = "_".join(f"{k}{v}" for k, v in vars(args).items() if v is not None and k not in ("samplers", "out"))
    run = out / "runs" / f"r{resolution}_{name}"
    started = time.perf_counter()
    train(TrainSpec.from_dict(spec), data, run, progress=False)
    result = {"recipe": vars(args) | {"resolution": resolution}, "train_s": round(time.perf_counter() - started, 1)}
    info = read_reference(reference)[3]
    result["real"] = {"recognisable": info["recognisable"], **info["noise_floor"]}
    for sampler in args.samplers or [config["sampling"]["sampler"]]:
        started = time.perf_counter()
        shard = run / f"{sampler}.npz"
        count = config["sampling"]["num_samples"]
        draw_shard(run / "ema.pt", sampler, shard, 0, count, batch_size=100, seed=config["sampling"]["seed"])
        metrics = evaluate_samples(
            [shard], reference, run / f"{sampler}.json", config["evaluation"]["kid_subset_size"], bootstrap=0
        )
        scores = {key: metrics[key] for key in ("fid", "recognisable", "prc_precision", "prc_recall")}
        result[sampler] = scores | {"sample_s": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))
    with open(out / "recipes.jsonl", "a") as log:
        log.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
