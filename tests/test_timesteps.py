"""Timestep draws (p2core.timesteps): P2 as a distribution of t has the expected eps-MSE of P2 as a weight, the uniform
draw is the one every earlier run made, and the logit-normal draw is SD3's on the chain."""

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

from p2core.diffusion import create_diffusion
from p2core.objective import Objective
from p2core.schedule import make_betas
from p2core.timesteps import describe, draw_weightings, timestep_draw
from p2core.unet import create_model
from p2core.weighting import loss_weights

ALPHAS_CUMPROD = np.cumprod(1.0 - make_betas("linear", 1000))
P2_DRAW = {"importance": {"weighting": "p2", "weighting_params": {"gamma": 1.0, "k": 1.0}}}


def test_importance_draw_has_the_expected_loss_of_the_weight_in_closed_form():
    """E_uniform[w_t l_t] = sum_t p(t) c l_t for any per-step losses l_t (p = w / sum w, c = mean w)."""
    draw = timestep_draw(P2_DRAW, ALPHAS_CUMPROD)
    weights = loss_weights("p2", ALPHAS_CUMPROD, gamma=1.0, k=1.0)
    losses = np.random.default_rng(0).gamma(2.0, size=1000)
    assert draw.probabilities.sum() == pytest.approx(1.0, abs=1e-12)
    assert (draw.probabilities * draw.correction * losses).sum() == pytest.approx((weights * losses).mean(), rel=1e-12)


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_the_objectives_expected_eps_mse_is_the_weighted_objectives(learn_sigma):
    """On one model, one image and one noise per step, the eps-MSE of P2 as a weight averaged over every step equals
    that of P2 as a draw weighted by its probabilities; without learned sigma that is the whole loss."""
    process = create_diffusion(num_timesteps=50, learn_sigma=learn_sigma)
    weighted = Objective(process, "p2", {"gamma": 1.0, "k": 1.0})
    drawn = Objective(process, "uniform", timesteps=P2_DRAW)
    torch.manual_seed(0)
    model = create_model(image_size=8, in_channels=1, learn_sigma=learn_sigma, **TINY_MODEL).eval()
    t = torch.arange(50)
    x = torch.rand(1, 1, 8, 8).expand(50, 1, 8, 8) * 2 - 1
    noise = torch.randn(50, 1, 8, 8)
    with torch.no_grad():
        a, b = weighted.losses(model, x, t, noise), drawn.losses(model, x, t, noise)
    p = torch.as_tensor(drawn.timesteps.probabilities, dtype=torch.float32)
    assert (p * b["mse"]).sum().item() == pytest.approx(a["mse"].mean().item(), rel=1e-5)
    if not learn_sigma:
        assert (p * b["loss"]).sum().item() == pytest.approx(a["loss"].mean().item(), rel=1e-5)


def test_the_uniform_draw_is_the_draw_of_every_earlier_run():
    draw = timestep_draw("uniform", ALPHAS_CUMPROD)
    a = draw.sample(64, torch.Generator().manual_seed(3))
    b = torch.randint(1000, (64,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and (draw.correction == 1).all()


@pytest.mark.parametrize("setting", [P2_DRAW, {"logit_normal": {"mean": 0.5, "std": 1.2}}])
def test_drawn_timesteps_follow_the_draws_probabilities(setting):
    draw = timestep_draw(setting, ALPHAS_CUMPROD)
    t = draw.sample(400_000, torch.Generator().manual_seed(0))
    frequencies = np.bincount(t.numpy(), minlength=1000) / len(t)
    assert np.abs(frequencies - draw.probabilities).max() < 5 * np.sqrt(draw.probabilities.max() / len(t))


def test_the_logit_normal_draw_is_sd3s_continuous_time_binned_on_the_chain():
    """Step t gets the mass of u = sigmoid(n), n ~ N(m, s^2), in [t/T, (t+1)/T): checked against drawn u."""
    draw = timestep_draw({"logit_normal": {"mean": -0.5, "std": 1.0}}, ALPHAS_CUMPROD)
    u = 1.0 / (1.0 + np.exp(-np.random.default_rng(0).normal(-0.5, 1.0, size=1_000_000)))
    binned = np.bincount(np.minimum((u * 1000).astype(int), 999), minlength=1000) / len(u)
    assert draw.probabilities.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.abs(binned - draw.probabilities).max() < 3e-4
    assert (draw.correction == 1).all()


@pytest.mark.parametrize(
    "setting, message",
    [
        ("nonesuch", "unknown timesteps 'nonesuch'"),
        ({"logit_normal": {"std": 0.0}}, "std > 0"),
        ({"logit_normal": {"sd": 1.0}}, "timesteps 'logit_normal'"),
        ({"importance": {"weighting": "p3"}}, "unknown weighting 'p3'"),
        ({"importance": {}, "uniform": {}}, "one name"),
    ],
)
def test_bad_timestep_settings_name_the_problem(setting, message):
    with pytest.raises(ValueError, match=message):
        timestep_draw(setting, ALPHAS_CUMPROD)


def test_a_draw_is_described_in_words():
    assert describe(P2_DRAW) == "importance p2 gamma=1.0 k=1.0"
    assert describe({"logit_normal": {"mean": 0.0, "std": 1.0}}) == "logit_normal mean=0.0 std=1.0"
    assert describe("uniform") == "uniform"


def test_the_weightings_a_draw_is_made_of_are_named():
    assert draw_weightings(P2_DRAW) == ["p2"]
    assert draw_weightings({"logit_normal": {"mean": 0.0, "std": 1.0}}) == draw_weightings("uniform") == []
