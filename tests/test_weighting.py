import numpy as np
import pytest

from p2core.schedule import make_betas
from p2core.weighting import WEIGHTINGS, loss_weights, normalised, register, vlb_lambda, vlb_weights

ABAR = {name: np.cumprod(1 - make_betas(name, 1000)) for name in ("linear", "cosine")}


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_p2_gamma_zero_is_uniform(schedule):
    abar = ABAR[schedule]
    np.testing.assert_array_equal(loss_weights("p2", abar, gamma=0.0, k=1.0), loss_weights("uniform", abar))


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_p2_with_k1_is_one_minus_abar_power(gamma):
    abar = ABAR["linear"]
    np.testing.assert_allclose(loss_weights("p2", abar, gamma=gamma, k=1.0), (1 - abar) ** gamma, rtol=1e-12)


def test_p2_unnormalised_values():
    abar = ABAR["linear"]
    w = loss_weights("p2", abar, gamma=1.0)
    assert w[0] == pytest.approx(1 - abar[0])  # tiny: the clean-up stage is down-weighted
    assert w[-1] == pytest.approx(1.0, abs=1e-4)
    assert w.sum() != pytest.approx(1.0)


@pytest.mark.parametrize(
    "name, params",
    [
        ("p2", {"gamma": 1.0}),
        ("p2", {"gamma": 0.5, "k": 5.0}),
        ("min_snr", {"gamma": 5.0}),
        ("sigmoid", {"b": -1.0}),
        ("soft_min_snr", {"gamma": 4.0}),
    ],
)
def test_weights_monotone_in_snr(name, params):
    """Every weighting here puts non-increasing weight on higher-SNR (less noisy) steps."""
    w = loss_weights(name, ABAR["linear"], **params)
    assert np.all(np.diff(w) >= -1e-15)  # t increasing = SNR decreasing
    assert w[-1] > w[0]


def test_min_snr_and_sigmoid_closed_forms():
    abar = ABAR["cosine"][:-1]  # skip the clipped last step (SNR ~ 0)
    snr = abar / (1 - abar)
    np.testing.assert_allclose(loss_weights("min_snr", abar, gamma=5.0), np.minimum(snr, 5.0) / snr)
    np.testing.assert_allclose(loss_weights("sigmoid", abar, b=0.5), 1 / (1 + np.exp(-(0.5 - np.log(snr)))), rtol=1e-12)


def test_soft_min_snr_is_the_smooth_minimum_in_eps_units_and_a_p2_with_a_later_knee():
    abar = ABAR["linear"]
    snr = abar / (1 - abar)
    w = loss_weights("soft_min_snr", abar, gamma=4.0)
    np.testing.assert_allclose(w * snr, snr * 4.0 / (snr + 4.0), rtol=1e-12)  # x0 units: soft min(SNR, gamma)
    np.testing.assert_allclose(w, 4.0 * loss_weights("p2", abar, gamma=1.0, k=4.0), rtol=1e-12)
    hard = loss_weights("min_snr", abar, gamma=4.0)
    assert np.all(w <= hard + 1e-12) and np.all(w >= hard / 2 - 1e-12)  # between half the hard minimum and it


def test_edm_weighting_reproduces_edms_log_normal_noise_levels_under_uniform_t():
    """Importance weights under uniform t: dividing out EDM's loss weight leaves the log-normal density of ln sigma,
    so the weighted mean and spread of ln sigma_t are EDM's P_mean and P_std (the linear schedule spans
    ln sigma from -4.6 to 5.1, +-3 P_std around P_mean)."""
    abar = ABAR["linear"]
    snr = abar / (1 - abar)
    log_sigma = -0.5 * np.log(snr)
    w = loss_weights("edm", abar)
    assert w.mean() == pytest.approx(1.0)
    emphasis = w / (1 + 1 / (0.25 * snr))  # EDM's own loss weight, in eps units, divided out
    mean = np.average(log_sigma, weights=emphasis)
    spread = np.sqrt(np.average((log_sigma - mean) ** 2, weights=emphasis))
    assert mean == pytest.approx(-1.2, abs=0.03) and spread == pytest.approx(1.2, abs=0.03)
    # the closed form at interior timesteps, ln sigma's slope over t by central differences, up to the scale
    density = np.exp(-0.5 * ((log_sigma - -1.2) / 1.2) ** 2) / (1.2 * np.sqrt(2 * np.pi))
    closed = (1 + 1 / (0.25 * snr[1:-1])) * density[1:-1] * (log_sigma[2:] - log_sigma[:-2]) / 2
    np.testing.assert_allclose(w[1:-1] / closed, np.full(len(closed), w[1] / closed[0]), rtol=1e-9)
    with pytest.raises(ValueError, match="p_std > 0"):
        loss_weights("edm", abar, p_std=0.0)


def test_vlb_view_and_normalisation():
    betas = make_betas("linear", 1000)
    abar = np.cumprod(1 - betas)
    lam = vlb_lambda(betas)
    np.testing.assert_allclose(lam, (1 - betas) * (1 - abar) / betas)
    np.testing.assert_allclose(vlb_weights("p2", betas, gamma=1.0), lam * (1 - abar), rtol=1e-12)
    assert normalised(lam).sum() == pytest.approx(1.0)


def test_bad_names_and_parameters():
    abar = ABAR["linear"]
    with pytest.raises(ValueError, match="unknown weighting"):
        loss_weights("p3", abar)
    with pytest.raises(ValueError, match="unknown gama"):
        loss_weights("p2", abar, gama=1.0)
    with pytest.raises(ValueError, match="gamma >= 0"):
        loss_weights("p2", abar, gamma=-1.0)


def test_registry_accepts_a_new_weighting():
    @register("test_constant")
    def constant(snr, value: float = 2.0):
        return np.full_like(snr, value)

    try:
        np.testing.assert_array_equal(loss_weights("test_constant", ABAR["linear"], value=3.0), 3.0)
    finally:
        del WEIGHTINGS["test_constant"]
