"""The samplers (p2core.sampling) on closed-form cases, and the one grammar of sampler names."""

import re

import numpy as np
import pytest
import torch
from test_diffusion import FixedOutput, T, oracle_eps_model

from p2core import sampling
from p2core.diffusion import create_diffusion
from p2core.respace import SAMPLER_PATTERN, SAMPLERS, parse_sampler
from p2core.sampling import for_sampler, respaced, sample
from p2core.schedule import make_betas


@pytest.mark.parametrize("sampler", ["ddpm", "ddpm10", "ddim10", "ddpm5,3", "ddim5,3", "dpmpp2m10", "dpmpp2m5,3"])
def test_oracle_denoiser_recovers_the_single_training_image(sampler):
    """With the exact eps of a one-image data distribution, every sampler must land on that image."""
    x0 = torch.rand(1, 1, 4, 4) * 1.6 - 0.8
    diffusion = create_diffusion(num_timesteps=T)
    kind, process = for_sampler(diffusion, sampler)
    gen = torch.Generator().manual_seed(0)
    out = sample(process, oracle_eps_model(diffusion, x0, True), (3, 1, 4, 4), kind, generator=gen)
    torch.testing.assert_close(out, x0.expand(3, -1, -1, -1), atol=0.02, rtol=0)


def test_dpm_solver_pp_2m_converges_at_second_order_to_the_probability_flow_solution(monkeypatch):
    """Gaussian data N(0, s^2): the exact eps is linear and the probability-flow ODE keeps x_t / sqrt(abar_t s^2 + 1 -
    abar_t) constant, so the exact output (E[x_0 | x at step 0]) is known in closed form. Halving the step size cuts
    DPM-Solver++(2M)'s error about 4x (second order), DDIM's about 2x (first order) on the same (log-SNR) steps."""
    s2 = 0.25
    diffusion = create_diffusion(num_timesteps=1000, learn_sigma=False)
    abar = torch.as_tensor(np.cumprod(1 - make_betas("linear", 1000)), dtype=torch.float64)

    def model(x, t):
        a = abar[t].view(-1, 1, 1, 1)
        return x * torch.sqrt(1 - a) / (a * s2 + 1 - a)  # E[eps | x_t] for Gaussian data

    x_T = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_0 = x_T * torch.sqrt((abar[0] * s2 + 1 - abar[0]) / (abar[-1] * s2 + 1 - abar[-1]))
    exact = torch.sqrt(abar[0]) * s2 / (abar[0] * s2 + 1 - abar[0]) * x_0

    monkeypatch.setattr(sampling, "gaussian_noise", lambda shape, generator, device: x_T.clone())

    def error(kind, spec):
        out = sample(respaced(diffusion, spec), model, x_T.shape, kind, clip_denoised=False)
        return float((out - exact).abs().max())

    dpm = [error("dpmpp2m", f"logsnr{n}") for n in (20, 40, 80)]
    ddim = [error("ddim", f"ddim{n}") for n in (20, 40, 100)]
    ddim_logsnr = [error("ddim", f"logsnr{n}") for n in (20, 40, 80)]
    assert dpm[0] / dpm[1] > 3.0 and dpm[1] / dpm[2] > 3.0  # second order
    assert 1.5 < ddim_logsnr[0] / ddim_logsnr[1] < 2.5 and 1.5 < ddim_logsnr[1] / ddim_logsnr[2] < 2.5  # first order
    assert dpm[0] < ddim[0] / 5 and dpm[0] < ddim_logsnr[0] / 5


def test_respaced_process_calls_model_with_original_indices():
    process = respaced(create_diffusion(num_timesteps=T), "ddim5")
    model = FixedOutput(torch.zeros(1, 2, 2, 2))
    sample(process, model, (1, 1, 2, 2), "ddim")
    assert [int(t[0]) for t in model.seen_t] == [80, 60, 40, 20, 0]


def test_sampler_is_deterministic_under_a_seed():
    process = respaced(create_diffusion(num_timesteps=T), "20")
    model = torch.nn.Conv2d(1, 2, 3, padding=1)
    draws = [
        sample(process, lambda x, t: model(x), (2, 1, 4, 4), "ddpm", generator=torch.Generator().manual_seed(seed))
        for seed in (7, 7, 8)
    ]
    torch.testing.assert_close(draws[0], draws[1], atol=0, rtol=0)
    assert not torch.equal(draws[0], draws[2])


def test_parse_sampler_names():
    assert parse_sampler("ddpm250") == ("ddpm", "250")
    assert parse_sampler("ddim25") == ("ddim", "ddim25")
    assert parse_sampler("ddim10,10") == ("ddim", "10,10")
    assert parse_sampler("ddpm") == ("ddpm", "")
    for bad in ("euler50", "ddimlogsnr20", "ddpm10,", "ddim-5"):  # the one grammar: kind, then counts
        with pytest.raises(ValueError, match="bad sampler"):
            parse_sampler(bad)
        assert re.fullmatch(SAMPLER_PATTERN, bad) is None
    assert re.fullmatch(SAMPLER_PATTERN, "dpmpp2m10,10")


def test_every_sampler_kind_has_one_registered_function():
    assert set(sampling.SAMPLER_FUNCTIONS) == set(SAMPLERS)


@pytest.mark.parametrize(
    ("kind", "eta", "draws"), [("ddpm", 0.0, 4), ("ddim", 0.0, 0), ("ddim", 0.5, 4), ("dpmpp2m", 0, 0)]
)
def test_a_sampler_draws_noise_only_where_it_uses_it(kind, eta, draws):
    """With one generator per image a draw costs B calls: none for deterministic steps or the last ancestral one."""
    process = respaced(create_diffusion(num_timesteps=T), "5")
    calls = []

    def noise():
        calls.append(1)
        return torch.randn(2, 1, 4, 4)

    model = FixedOutput(torch.zeros(2, 2, 4, 4))
    steps = range(process.num_timesteps - 1, -1, -1)
    list(sampling.SAMPLER_FUNCTIONS[kind](process, model, torch.randn(2, 1, 4, 4), steps, noise, True, eta))
    assert len(calls) == draws
