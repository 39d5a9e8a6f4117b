import math

import numpy as np
import pytest
import torch

from p2core.diffusion import GaussianDiffusion, create_diffusion
from p2core.objective import Objective, create_objective, normal_kl, vb_terms_bpd
from p2core.schedule import make_betas
from p2core.weighting import loss_weights

T = 100


class FixedOutput(torch.nn.Module):
    """A 'model' that returns a given tensor (a parameter, so gradients can be inspected)."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = torch.nn.Parameter(output.clone())
        self.seen_t = []

    def forward(self, x, t):
        self.seen_t.append(t.clone())
        return self.output


def oracle_eps_model(diffusion: GaussianDiffusion, x0: torch.Tensor, learn_sigma: bool):
    """The exact eps predictor for a data distribution that is the single image ``x0``, in original indices."""
    sqrt_abar = torch.as_tensor(np.sqrt(np.cumprod(1 - make_betas("linear", T))), dtype=torch.float32)

    def model(x, t):
        a = sqrt_abar[t].view(-1, 1, 1, 1)
        eps = (x - a * x0) / torch.sqrt(1 - a**2)
        return torch.cat([eps, torch.zeros_like(eps)], 1) if learn_sigma else eps

    return model


def test_q_sample_formula():
    diffusion = create_diffusion(num_timesteps=T)
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 50, 99])
    abar = np.cumprod(1 - make_betas("linear", T))[[0, 50, 99]]
    expected = (
        torch.tensor(np.sqrt(abar), dtype=torch.float32).view(-1, 1, 1, 1) * x0
        + torch.tensor(np.sqrt(1 - abar), dtype=torch.float32).view(-1, 1, 1, 1) * noise
    )
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), expected)


def test_kl_is_zero_when_model_matches_posterior():
    torch.manual_seed(0)
    diffusion = create_diffusion(num_timesteps=T)
    x0, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    t = torch.tensor([1, 10, 50, 99])
    x_t = diffusion.q_sample(x0, t, noise)
    # eps = true noise gives pred_x0 = x0; v = -1 selects the (clipped) posterior log-variance
    output = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    vb = vb_terms_bpd(diffusion, output, x0, x_t, t)
    torch.testing.assert_close(vb, torch.zeros(4), atol=1e-4, rtol=0)
    # and clearly not zero for the other end of the variance range where beta_t and the posterior differ (small t)
    assert (vb_terms_bpd(diffusion, torch.cat([noise, torch.ones_like(noise)], 1), x0, x_t, t)[:2] > 1e-3).all()


def test_normal_kl_closed_form():
    kl = normal_kl(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(math.log(4.0)))
    assert kl.item() == pytest.approx(math.log(2.0) + (1 + 1) / 8 - 0.5, rel=1e-6)


def test_vb_gradient_reaches_only_the_variance_channels():
    torch.manual_seed(0)
    objective = create_objective({"num_timesteps": T, "weighting": "p2", "weighting_params": {"gamma": 1.0}})
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    model = FixedOutput(torch.randn(4, 6, 8, 8) * 0.5)
    losses = objective.losses(model, x0, torch.tensor([0, 3, 40, 99]))
    losses["vb"].sum().backward()
    grad = model.output.grad
    assert torch.count_nonzero(grad[:, :3]) == 0  # exactly zero: stop-gradient on eps
    assert grad[:, 3:].abs().sum() > 0


def test_p2_weight_multiplies_the_mse_term_only():
    torch.manual_seed(0)
    x0, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 5, 50, 99])
    output = torch.randn(4, 6, 8, 8)
    process = create_diffusion(num_timesteps=T)
    baseline = Objective(process).losses(FixedOutput(output), x0, t, noise)
    weighted = Objective(process, "p2", {"gamma": 0.5, "k": 1.0}).losses(FixedOutput(output), x0, t, noise)
    w = loss_weights("p2", process.terms.alphas_cumprod, gamma=0.5, k=1.0)[t.numpy()]
    w = torch.tensor(w, dtype=torch.float32)
    torch.testing.assert_close(weighted["mse"], w * baseline["mse"])
    torch.testing.assert_close(weighted["vb"], baseline["vb"])
    torch.testing.assert_close(weighted["loss"], weighted["mse"] + weighted["vb"])
    expected_mse = ((noise - output[:, :3]) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(baseline["mse"], expected_mse)


def test_vb_is_rescaled_by_T_over_1000():
    torch.manual_seed(0)
    x0, noise, output = torch.rand(2, 1, 4, 4) * 2 - 1, torch.randn(2, 1, 4, 4), torch.randn(2, 2, 4, 4)
    t = torch.tensor([3, 7])
    diffusion = create_diffusion(num_timesteps=T)
    losses = Objective(diffusion).losses(FixedOutput(output), x0, t, noise)
    raw = vb_terms_bpd(diffusion, output, x0, diffusion.q_sample(x0, t, noise), t)
    torch.testing.assert_close(losses["vb"], raw * T / 1000)


def test_fixed_variance_model_has_no_vb_term():
    diffusion = create_diffusion(num_timesteps=T, learn_sigma=False)
    losses = Objective(diffusion).losses(
        FixedOutput(torch.randn(2, 1, 4, 4)), torch.zeros(2, 1, 4, 4), torch.tensor([1, 2])
    )
    assert torch.count_nonzero(losses["vb"]) == 0
    with pytest.raises(ValueError, match="output channels"):
        Objective(create_diffusion(num_timesteps=T)).losses(
            FixedOutput(torch.randn(2, 1, 4, 4)), torch.zeros(2, 1, 4, 4), torch.tensor([1, 2])
        )
