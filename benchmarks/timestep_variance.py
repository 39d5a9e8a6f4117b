"""Gradient variance of P2 as a loss weight vs P2 as a timestep draw, on the same model and data; prints one JSON
object.

    .venv/bin/python benchmarks/timestep_variance.py [--batches 200] [--batch-size 8] [--checkpoint ema.pt]

Both estimators have the same expected eps-MSE gradient (``p2core.timesteps``): a uniform draw of t with the weight
``w_t`` (``weighting: p2``), and the draw ``p(t) = w_t / sum(w)`` with the factor ``mean(w)`` (``timesteps:
{importance: {weighting: p2}}``). For ``--batches`` batches of the embedded digits at 8 px (images, noise and t drawn
anew for each batch, the same images and noise for both estimators): the gradient of each estimator's eps-MSE term
(the term they share in expectation) with respect to every parameter of the embedded default's UNet, at a fresh
initialisation (learned sigma off) or at ``--checkpoint``'s EMA weights and flags. Printed: each estimator's total
variance (the sum over parameters of the per-parameter variance between batches), their ratio, and the distance
between their mean gradients in units of its standard error (about 1 when the means agree).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2core.diffusion import create_diffusion  # noqa: E402
from p2core.objective import Objective  # noqa: E402
from p2core.prepare import digits  # noqa: E402
from p2core.unet import create_model  # noqa: E402

P2 = {"gamma": 1.0, "k": 1.0}
ESTIMATORS = {
    "weight": {"weighting": "p2", "weighting_params": P2},
    "draw": {"weighting": "uniform", "timesteps": {"importance": {"weighting": "p2", "weighting_params": P2}}},
}


def gradient(model, objective: Objective, x, t, noise) -> torch.Tensor:
    """The flattened gradient of the batch's mean eps-MSE term, shape (parameters,)."""
    model.zero_grad(set_to_none=True)
    objective.losses(model, x, t, noise)["mse"].mean().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double()


def measure(batches: int, batch_size: int, checkpoint: str | None, seed: int = 0) -> dict:
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    flags = {"image_size": 8, "in_channels": 1, "learn_sigma": False, **config["archs"]["a"]["model"]}
    if checkpoint:
        stored = torch.load(checkpoint, weights_only=True)
        flags = stored["spec"]["model"]
    process = create_diffusion(config["schedule"], config["num_timesteps"], learn_sigma=flags["learn_sigma"])
    objectives = {name: Objective(process, **settings) for name, settings in ESTIMATORS.items()}
    torch.manual_seed(seed)
    model = create_model(**flags)
    if checkpoint:
        model.load_state_dict(stored["state_dict"])
    images = torch.as_tensor(digits(8)[0]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    generator = torch.Generator().manual_seed(seed)
    sums = {name: None for name in ESTIMATORS}
    squares = {name: None for name in ESTIMATORS}
    for _ in range(batches):
        x = images[torch.randint(len(images), (batch_size,), generator=generator)]
        noise = torch.randn(x.shape, generator=generator)
        for name, objective in objectives.items():
            g = gradient(model, objective, x, objective.draw_timesteps(batch_size, generator), noise)
            sums[name] = g if sums[name] is None else sums[name] + g
            squares[name] = g * g if squares[name] is None else squares[name] + g * g
    means = {name: sums[name] / batches for name in ESTIMATORS}
    variances = {name: (squares[name] / batches - means[name] ** 2) * batches / (batches - 1) for name in ESTIMATORS}
    total = {name: float(variances[name].sum()) for name in ESTIMATORS}
    standard_error = float(torch.sqrt((variances["weight"] + variances["draw"]).sum() / batches))
    return {
        "machine": platform.processor() or platform.machine(),
        "model": "fresh initialisation" if not checkpoint else checkpoint,
        "batches": batches,
        "batch_size": batch_size,
        "total_gradient_variance": total,
        "variance_ratio_draw_over_weight": total["draw"] / total["weight"],
        "mean_gradient_distance_in_standard_errors": float((means["weight"] - means["draw"]).norm()) / standard_error,
        "mean_gradient_norm": {name: float(means[name].norm()) for name in ESTIMATORS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--checkpoint", help="an ema.pt of the embedded default's arch a (default: a fresh model)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    print(json.dumps(measure(args.batches, args.batch_size, args.checkpoint), indent=1))


if __name__ == "__main__":
    main()
