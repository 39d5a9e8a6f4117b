import numpy as np
import pytest

from p2core.respace import parse_sampler, respaced_betas, sampler_steps, space_timesteps
from p2core.schedule import make_betas


def test_even_spacing_counts():
    steps = space_timesteps(1000, "250")
    assert len(steps) == 250 and min(steps) == 0 and max(steps) == 999
    assert space_timesteps(1000, 250) == steps


def test_rounding_is_half_to_even():
    # one section of 6 steps, 5 kept: stride 1.25 -> 0, 1.25, 2.5, 3.75, 5; round(2.5) == 2 in Python
    assert space_timesteps(6, "5") == {0, 1, 2, 4, 5}


def test_sections_get_the_remainder_first():
    # T = 10 in 3 sections: sizes 4, 3, 3; two steps each -> section ends
    assert space_timesteps(10, "2,2,2") == {0, 3, 4, 6, 7, 9}
    steps = sorted(space_timesteps(1000, "10,10,10"))
    assert len(steps) == 30 and steps[:2] == [0, 37] and steps[9] == 333 and steps[10] == 334


def test_ddim_smallest_stride_with_exact_count():
    assert space_timesteps(1000, "ddim25") == set(range(0, 1000, 40))
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(10, "ddim3") == {0, 4, 8}
    with pytest.raises(ValueError, match="exactly 7 steps"):
        space_timesteps(10, "ddim7")


@pytest.mark.parametrize("spec", ["x", "10,,2", "0", "2000"])
def test_bad_specs(spec):
    with pytest.raises(ValueError):
        space_timesteps(1000, spec)


@pytest.mark.parametrize("spec", ["250", "10,10,10", "ddim25", "7"])
def test_respaced_abar_equals_base_on_kept_steps(spec):
    abar = np.cumprod(1 - make_betas("linear", 1000))
    kept = space_timesteps(1000, spec)
    betas, timestep_map = respaced_betas(abar, kept)
    np.testing.assert_allclose(np.cumprod(1 - betas), abar[timestep_map], rtol=1e-12)
    assert list(timestep_map) == sorted(kept)


@pytest.mark.parametrize("count", [2, 5, 20, 250, 1000])
def test_logsnr_steps_are_exactly_count_distinct_steps_with_both_ends(count):
    abar = np.cumprod(1 - make_betas("linear", 1000))
    steps = sorted(space_timesteps(1000, f"logsnr{count}", abar))
    assert len(steps) == count and steps[0] == 0 and steps[-1] == 999
    assert sampler_steps(f"dpmpp2m{count}", 1000) == count
    if count == 20:  # evenly spaced in log-SNR, up to integer rounding near t = 0 (steps 0, 1, 4, ...)
        gaps = np.diff(0.5 * np.log(abar[steps] / (1 - abar[steps])))
        assert np.all(np.abs(gaps / gaps.mean() - 1) < 0.25)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        space_timesteps(1000, f"logsnr{count}")


def test_dpm_solver_names():
    assert parse_sampler("dpmpp2m20") == ("dpmpp2m", "logsnr20")
    assert parse_sampler("dpmpp2m10,10") == ("dpmpp2m", "10,10")
    assert sampler_steps("dpmpp2m10,10", 1000) == 20
    with pytest.raises(ValueError, match="1001 log-SNR spaced steps"):
        sampler_steps("dpmpp2m1001", 1000)
