import numpy as np
import pytest

from p2core.respace import respaced_betas, space_timesteps
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
