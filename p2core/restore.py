"""A trained model back from its checkpoint: the spec stored in every checkpoint rebuilds the UNet and the diffusion
process, and the EMA weights are loaded into it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from p2core.checkpoint import load_checkpoint, load_weights
from p2core.diffusion import GaussianDiffusion, process_of
from p2core.unet import create_model


def build(spec: dict) -> tuple[nn.Module, GaussianDiffusion]:
    """Model and diffusion process of a stored run spec (a checkpoint's ``spec``, with the data's geometry filled
    in); the spec's objective settings are not read (training builds its objective, :mod:`p2core.objective`)."""
    return create_model(**spec["model"]), process_of(spec["diffusion"])


def trained_precision(state: dict) -> str:
    """The precision the model of a loaded checkpoint (either kind) was trained in: its spec's, resolved when the run
    started; for a file written before runs stored it (``auto`` or absent), the one its provenance recorded."""
    precision = state["spec"].get("precision", "auto")
    if precision == "auto":
        precision = state.get("provenance", {}).get("precision", "fp32")
    return precision


def load_ema_model(path: str | Path, device: torch.device) -> tuple[nn.Module, GaussianDiffusion, dict]:
    """The EMA model (eval mode, on ``device``) and diffusion of a checkpoint of either kind, and its content."""
    state = load_checkpoint(path)
    model, diffusion = build(state["spec"])
    load_weights(model, state["state_dict"] if state["kind"] == "ema" else state["ema"], path)
    return model.to(device).eval(), diffusion, state
