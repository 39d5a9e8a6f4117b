"""Shared fixtures: small prepared datasets and a tiny model spec, all made on the fly (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2core.data import prepare_embedded

TINY_MODEL = {"num_channels": 32, "channel_mult": "1,2", "attention_resolutions": "4", "num_head_channels": 32}


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits8(tmp_path_factory):
    """The embedded digits, prepared at 8 px."""
    folder = tmp_path_factory.mktemp("digits8")
    prepare_embedded("digits", folder, 8)
    return folder


def tiny_spec(**overrides) -> dict:
    spec = {
        "model": dict(TINY_MODEL),
        "diffusion": {"num_timesteps": 100, "weighting": "p2", "weighting_params": {"gamma": 1.0, "k": 1.0}},
        "steps": 6,
        "batch_size": 8,
        "lr": 1e-3,
        "ema_rate": 0.9,
        "save_every": 2,
        "log_every": 2,
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def rng():
    return np.random.default_rng(0)
