"""p2core against the authors' own numbers: ``tests/fixtures/authors_numbers.npz`` holds what jychoi118/P2-weighting's
code computed on fixed weights and inputs (made by ``benchmarks/authors_fixture.py``, which says how); here p2core
computes the same from the same weights and inputs. What it proves: p2core's UNet (same module names, same maths),
the hybrid loss with P2 weighting (gamma 1, 0.5, the baseline, and k 5 on the cosine schedule), respacing, and one
ancestral and one DDIM step (eta 0 and 0.5) agree with the authors' code to fp32 rounding."""

import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

from p2core.diffusion import create_diffusion
from p2core.objective import Objective
from p2core.sampling import SAMPLER_FUNCTIONS, respaced
from p2core.unet import create_model

sys.path.insert(0, str(ROOT / "benchmarks"))
import authors_fixture as fixture  # noqa: E402

#: fp32 rounding of the same maths in another order (attention kernels, summation order): far below any real change
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def authors():
    with np.load(ROOT / "tests/fixtures/authors_numbers.npz") as numbers:
        return dict(numbers)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    unet = create_model(**fixture.FLAGS, in_channels=3)
    unet.load_state_dict(fixture.fixed_weights(unet.state_dict()))  # the same names: the authors' layout
    return unet.eval()


def test_the_unet_computes_the_authors_output(model, authors):
    inputs = fixture.fixed_inputs()
    with torch.no_grad():
        out = model(inputs["x_t"], inputs["t"]).numpy()
    assert np.abs(authors["model_out"]).mean() > 0.1  # the weights make a non-trivial output
    np.testing.assert_allclose(out, authors["model_out"], **TOLERANCE)


@pytest.mark.parametrize("name, schedule, gamma, k", fixture.LOSS_CASES)
def test_the_p2_weighted_hybrid_loss_is_the_authors(model, authors, name, schedule, gamma, k):
    inputs = fixture.fixed_inputs()
    objective = Objective(create_diffusion(schedule, 1000), "p2", {"gamma": gamma, "k": k})
    with torch.no_grad():
        terms = objective.losses(model, inputs["x_start"], inputs["t"], inputs["noise"])
    for key in ("loss", "mse", "vb"):
        np.testing.assert_allclose(terms[key].numpy(), authors[f"losses_{name}_{key}"], **TOLERANCE, err_msg=key)


@pytest.mark.parametrize(
    "kind, spec, step, eta",
    [("ddpm", "10", i, 0.0) for i in fixture.ANCESTRAL_STEPS]
    + [("ddim", "ddim10", i, e) for i, e in fixture.DDIM_STEPS],
)
def test_one_sampler_step_is_the_authors(model, authors, kind, spec, step, eta):
    inputs = fixture.fixed_inputs()
    process = respaced(create_diffusion("linear", 1000), spec)
    noise = fixture.drawn_noise(fixture.NOISE_SEED, inputs["x_t"])
    with torch.no_grad():
        out = next(SAMPLER_FUNCTIONS[kind](process, model, inputs["x_t"], [step], lambda: noise, True, eta))
    key = f"ancestral_{step}" if kind == "ddpm" else f"ddim_{step}_eta{eta}"
    np.testing.assert_allclose(out.numpy(), authors[key], **TOLERANCE)
