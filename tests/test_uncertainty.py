"""The learned weighting (EDM2's u(t), p2core.uncertainty): how it enters the loss, and that it learns what it
should: e^u(t) the expected loss at t."""

import math

import numpy as np
import torch
from conftest import TINY_MODEL

from p2core.diffusion import create_diffusion
from p2core.objective import Objective
from p2core.schedule import make_betas
from p2core.uncertainty import learned
from p2core.unet import create_model

ALPHAS_CUMPROD = np.cumprod(1.0 - make_betas("linear", 50))


def test_the_learned_weight_starts_at_one():
    assert np.allclose(learned(ALPHAS_CUMPROD).weights(), 1.0)


def test_the_loss_is_the_eps_mse_over_e_to_the_u_plus_u():
    process = create_diffusion(num_timesteps=50, learn_sigma=False)
    fixed, learning = Objective(process, "uniform"), Objective(process, "learned")
    with torch.no_grad():
        learning.uncertainty.linear.bias.fill_(math.log(2.0))  # u = ln 2 at every t
    torch.manual_seed(0)
    model = create_model(image_size=8, in_channels=1, learn_sigma=False, **TINY_MODEL).eval()
    x, t, noise = torch.rand(6, 1, 8, 8) * 2 - 1, torch.randint(50, (6,)), torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        a, b = fixed.losses(model, x, t, noise), learning.losses(model, x, t, noise)
    assert torch.allclose(b["mse"], a["mse"] / 2 + math.log(2.0), rtol=1e-6)
    assert fixed.uncertainty is None and fixed.trainable(torch.device("cpu")) == []


def test_e_to_the_u_learns_the_expected_loss_of_each_timestep():
    """Trained on per-step losses l_t that grow 20-fold along the chain, e^-u(t) ends proportional to 1 / l_t."""
    head = learned(ALPHAS_CUMPROD)
    losses = torch.linspace(0.05, 1.0, 50)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    t = torch.arange(50)
    for _ in range(1500):
        optimizer.zero_grad()
        u = head(t)
        (losses * torch.exp(-u) + u).mean().backward()
        optimizer.step()
    weights = head.weights()
    assert np.corrcoef(np.log(weights), -np.log(losses.numpy()))[0, 1] > 0.99
    assert np.allclose(weights * losses.numpy(), 1.0, rtol=0.2)
