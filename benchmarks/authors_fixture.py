"""The authors' own numbers on fixed inputs, for the test suite to hold p2core to (``tests/test_authors_numbers.py``).

    .venv/bin/python benchmarks/authors_fixture.py --authors ../P2-weighting --out tests/fixtures/authors_numbers.npz

``--authors``: an unpacked snapshot of jychoi118/P2-weighting, outside this repository; nothing of it is copied here,
its code is imported from there and run. What it computes, on a small UNet (8 px RGB, 32 channels, channel_mult 1,2,
attention at 4 px, learned sigma, scale-shift norm, BigGAN up/down) whose every weight is drawn from a fixed seed
(:func:`fixed_weights`; the authors' initialisation zeroes the output layer, which would make every output trivial),
on fixed images, timesteps and noise (:func:`fixed_inputs`):

* ``model_out``: the UNet's output (B, 6, 8, 8) at timesteps 0, 250, 600 and 999;
* ``losses_<case>_{loss,mse,vb}``: ``GaussianDiffusion.training_losses`` per image (B,), their hybrid loss with P2
  weighting, for each of :data:`LOSS_CASES` (schedule, gamma, k);
* ``ancestral_<i>``: one ``p_sample`` step at step ``i`` of the process respaced to 10 steps (``i = 0`` is the last,
  noise-free step), with the noise it drew (``torch.manual_seed`` before the call; the test gives p2core the same);
* ``ddim_<i>_eta<eta>``: one ``ddim_sample`` step of the process respaced to ``ddim10``, eta 0 and 0.5.

Numbers computed by running their code are facts; the file is small (kilobytes: inputs are regenerated from seeds).
"""

from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

#: the UNet flags, in the authors' names (p2core's ``create_model`` takes the same)
FLAGS = {
    "image_size": 8,
    "num_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": "1,2",
    "attention_resolutions": "4",
    "num_heads": 4,
    "num_head_channels": 16,
    "resblock_updown": True,
    "use_scale_shift_norm": True,
    "dropout": 0.0,
    "learn_sigma": True,
}
#: (name, noise schedule, P2 gamma, P2 k) of each training-loss case; gamma 0 is the authors' baseline
LOSS_CASES = (
    ("linear_gamma1", "linear", 1.0, 1.0),
    ("linear_gamma05", "linear", 0.5, 1.0),
    ("linear_baseline", "linear", 0.0, 1.0),
    ("cosine_gamma1_k5", "cosine", 1.0, 5.0),
)
TIMESTEPS = (0, 250, 600, 999)
ANCESTRAL_STEPS = (5, 0)
DDIM_STEPS = ((5, 0.0), (5, 0.5))
NOISE_SEED = 1234


def fixed_weights(state_dict: dict) -> dict:
    """Every tensor of ``state_dict`` replaced by values drawn from a generator seeded by its name (scale 0.2; norm
    weights around 1), so two codes with the same module names hold the same weights."""
    weights = {}
    for name, value in state_dict.items():
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        drawn = torch.randn(value.shape, generator=generator, dtype=torch.float64) * 0.2
        weights[name] = (drawn + 1.0 if "norm" in name and name.endswith("weight") else drawn).to(value.dtype)
    return weights


def fixed_inputs() -> dict[str, torch.Tensor]:
    """Images in [-1, 1] (4, 3, 8, 8), the timesteps :data:`TIMESTEPS` and Gaussian noise, from fixed seeds."""
    generator = torch.Generator().manual_seed(0)
    return {
        "x_start": torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1,
        "t": torch.tensor(TIMESTEPS),
        "noise": torch.randn(4, 3, 8, 8, generator=generator),
        "x_t": torch.randn(4, 3, 8, 8, generator=generator),
    }


def drawn_noise(seed: int, like: torch.Tensor) -> torch.Tensor:
    """The noise a sampler step draws with ``torch.randn_like`` right after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return torch.randn_like(like)


def authors_numbers(directory: Path) -> dict[str, np.ndarray]:
    """Run the authors' code at ``directory`` on :func:`fixed_inputs` (see the module docstring)."""
    sys.path.insert(0, str(directory.resolve()))
    from guided_diffusion import script_util

    def diffusion(schedule="linear", gamma=1.0, k=1.0, respacing=""):
        return script_util.create_gaussian_diffusion(
            steps=1000,
            learn_sigma=True,
            noise_schedule=schedule,
            timestep_respacing=respacing,
            p2_gamma=gamma,
            p2_k=k,
        )

    model = script_util.create_model(**{**FLAGS, "class_cond": False, "use_checkpoint": False})
    model.load_state_dict(fixed_weights(model.state_dict()))
    model.eval()
    inputs = fixed_inputs()
    out = {}
    with torch.no_grad():
        out["model_out"] = model(inputs["x_t"], inputs["t"])
        for name, schedule, gamma, k in LOSS_CASES:
            terms = diffusion(schedule, gamma, k).training_losses(
                model, inputs["x_start"], inputs["t"], noise=inputs["noise"]
            )
            out.update({f"losses_{name}_{key}": terms[key] for key in ("loss", "mse", "vb")})
        steps = torch.full((4,), 0, dtype=torch.long)
        for i in ANCESTRAL_STEPS:
            torch.manual_seed(NOISE_SEED)
            step = diffusion(respacing="10").p_sample(model, inputs["x_t"], steps.fill_(i), clip_denoised=True)
            out[f"ancestral_{i}"] = step["sample"]
        for i, eta in DDIM_STEPS:
            torch.manual_seed(NOISE_SEED)
            step = diffusion(respacing="ddim10").ddim_sample(
                model, inputs["x_t"], steps.fill_(i), clip_denoised=True, eta=eta
            )
            out[f"ddim_{i}_eta{eta}"] = step["sample"]
    return {key: value.detach().numpy() for key, value in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors", required=True, type=Path, help="an unpacked jychoi118/P2-weighting snapshot")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/authors_numbers.npz"))
    args = parser.parse_args()
    if not (args.authors / "guided_diffusion").is_dir():
        raise SystemExit(f"--authors {args.authors}: no guided_diffusion package there; unpack the authors' repo")
    torch.set_num_threads(1)
    numbers = authors_numbers(args.authors)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **numbers)
    print(f"{args.out}: {len(numbers)} arrays from {args.authors}")


if __name__ == "__main__":
    main()
