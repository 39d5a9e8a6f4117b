import math

import numpy as np
import pytest

from p2core.schedule import ScheduleTerms, make_betas, snr


def test_linear_endpoints_and_scaling():
    betas = make_betas("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    short = make_betas("linear", 250)  # scaled by 1000 / T
    assert short[0] == pytest.approx(4e-4) and short[-1] == pytest.approx(0.08)


def test_cosine_matches_closed_form():
    T = 1000
    betas = make_betas("cosine", T)

    def abar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    for i in (0, 1, 500, 998):
        assert betas[i] == pytest.approx(min(1 - abar((i + 1) / T) / abar(i / T), 0.999), rel=1e-12)
    assert betas[-1] == pytest.approx(0.999)  # clipped


def test_unknown_schedule_names_choices():
    with pytest.raises(ValueError, match="linear, cosine"):
        make_betas("quadratic", 10)


def test_posterior_terms():
    terms = ScheduleTerms.from_betas(make_betas("linear", 1000))
    assert np.all(np.diff(terms.snr) < 0)  # SNR decreasing in t
    assert terms.posterior_variance[0] == 0.0
    assert terms.posterior_log_variance_clipped[0] == terms.posterior_log_variance_clipped[1]
    # posterior variance is between 0 and beta_t for t > 0
    assert np.all(terms.posterior_variance[1:] <= terms.betas[1:])
    # posterior mean of (x0, xt) reproduces x0 when xt is noise-free signal:
    # coef1 + coef2 * sqrt(abar_t) = sqrt(abar_{t-1})
    lhs = terms.posterior_mean_coef1 + terms.posterior_mean_coef2 * terms.sqrt_alphas_cumprod
    np.testing.assert_allclose(lhs, np.sqrt(terms.alphas_cumprod_prev), rtol=1e-10)
    np.testing.assert_allclose(snr(terms.alphas_cumprod), terms.alphas_cumprod / (1 - terms.alphas_cumprod))
