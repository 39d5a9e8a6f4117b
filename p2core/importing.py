"""A model trained elsewhere as a p2core run: a guided-diffusion ``state_dict`` (the P2 authors' released ``*.pt``
files, or an ``ema_<rate>_<step>.pt`` of their training) becomes the run folder's ``ema.pt`` and ``run.json``, so
sampling, evaluation and every table treat it as a run that was trained here.

:func:`import_model` checks, in this order, each failure one :class:`~p2core.errors.P2Error` line and nothing
written: the file's SHA-256 against the one recorded under its name (:mod:`p2core.released`); a ``weights_only``
load (a pickle that would run code or build objects is refused before anything of it runs); that it is a flat
``name -> tensor`` state dict; a strict load into the UNet of the run's flags, where a mismatch names the first
missing, unexpected or mis-shaped key and, when one flag change would make the file fit, that flag.
"""

from __future__ import annotations

from pathlib import Path

import torch

from p2core import provenance, released
from p2core.checkpoint import save_checkpoint
from p2core.data import load_prepared
from p2core.device import RESOLVED_PRECISIONS, pick_device
from p2core.diffusion import LEARN_SIGMA, process_of
from p2core.errors import P2Error
from p2core.trainlog import EMA_FILE, write_run_file
from p2core.unet import create_model, parse_channel_mult, with_geometry
from p2core.weights import file_sha256

#: flag values tried, one flag at a time, to say which flag a file that does not fit was trained with (and every
#: set of the UNet's feature-map sizes for ``attention_resolutions``)
ALTERNATIVE_FLAGS = {
    "learn_sigma": (True, False),
    "num_res_blocks": (1, 2, 3, 4),
    "resblock_updown": (True, False),
    "use_scale_shift_norm": (True, False),
    "channel_mult": ("", "1,1,2,2,4,4", "1,1,2,3,4", "1,2,2,2", "1,2,3,4", "1,2,4", "1,2"),
}


def read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """The ``name -> tensor`` state dict in ``source``, loaded with ``weights_only=True`` on the CPU."""
    source = Path(source)
    try:
        content = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, a pickle with code or objects in it, ...: all mean "not usable"
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        refused = next((line for line in lines if "unsupported global" in line.lower()), None)
        if refused is not None:
            reason = refused.split(":", 1)[-1].split(" was not")[0].strip()[:120]
            raise P2Error(
                f"{source} is refused, nothing of it run: a pickle that would build objects or run code ({reason})"
            ) from None
        raise P2Error(f"{source} is unreadable (truncated or corrupt?): {lines[0].split('. ')[0][:160]}") from None
    if not isinstance(content, dict):
        raise P2Error(f"{source} holds a {type(content).__name__}, not a state dict (name -> tensor)")
    if "format" in content and "kind" in content:
        raise P2Error(f"{source} is a p2core checkpoint already; sample it directly instead of importing it")
    if {"state", "param_groups"} <= set(content):
        raise P2Error(f"{source} is an optimizer state (guided-diffusion opt*.pt); import the ema_*.pt or model file")
    foreign = next((k for k, v in content.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if foreign is not None:
        raise P2Error(
            f"{source} is not a state dict: entry {foreign!r} holds a {type(content[foreign]).__name__}, not a tensor"
        )
    return content


def fit_problem(state_dict: dict[str, torch.Tensor], flags: dict) -> str | None:
    """None when ``state_dict`` fits the UNet of ``flags`` key for key and shape for shape; else the first problem:
    ``"<n> missing (first: <key>)"``, ``"... unexpected ..."`` or ``"<key> is (a, b) in the file, (c, d) here"``."""
    own = _shapes(flags)
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shaped = [k for k in own if k in state_dict and tuple(state_dict[k].shape) != own[k]]
    if missing:
        return f"{len(missing)} missing (first: {missing[0]})"
    if unexpected:
        return f"{len(unexpected)} unexpected (first: {unexpected[0]})"
    if shaped:
        key = shaped[0]
        return f"{key} is {tuple(state_dict[key].shape)} in the file, {own[key]} here"
    return None


def likely_flag(state_dict: dict[str, torch.Tensor], flags: dict) -> str | None:
    """``"flag=value"`` for the first single change of a flag in :data:`ALTERNATIVE_FLAGS` (or of ``num_channels``
    and ``in_channels`` to the file's first convolution) with which ``state_dict`` fits; None if none does."""
    first_conv = state_dict.get("input_blocks.0.0.weight")
    sizes = [
        flags["image_size"] // 2**level
        for level in range(len(parse_channel_mult(flags.get("channel_mult", ""), flags["image_size"])))
    ]
    subsets = [[size for bit, size in enumerate(sizes) if mask >> bit & 1] for mask in range(2 ** len(sizes))]
    alternatives = {**ALTERNATIVE_FLAGS, "attention_resolutions": [",".join(map(str, s)) for s in subsets]}
    if first_conv is not None and first_conv.ndim == 4:
        alternatives = {"num_channels": (first_conv.shape[0],), "in_channels": (first_conv.shape[1],), **alternatives}
    for flag, values in alternatives.items():
        for value in values:
            if value == flags.get(flag):
                continue
            try:
                if fit_problem(state_dict, {**flags, flag: value}) is None:
                    return f"{flag}={value}"
            except ValueError:  # not a valid UNet at this image size (e.g. attention at an unreachable resolution)
                continue
    return None


def import_model(source: str | Path, data_folder: str | Path, out_dir: str | Path, spec: dict) -> Path:
    """Import ``source`` as the run ``out_dir``: ``ema.pt`` (a p2core EMA checkpoint whose ``spec`` holds the
    model flags with the data's geometry, the diffusion settings, the seed and ``imported``: the source file, its
    SHA-256 and size) and ``run.json``. ``spec``: ``model`` (UNet flags), ``diffusion``
    (the run's process and objective settings; the process's are checked here, the objective's by the config check,
    so that importing reaches no loss code), ``seed``, and ``precision``: the one the file was trained
    in (default ``fp32``, as guided-diffusion and the authors trained), what sampling with ``auto`` uses. Returns the
    ``ema.pt`` path."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.is_file():
        raise P2Error(released.missing_file_message(source))
    digest = file_sha256(source)
    released.check_recorded(source, digest)
    state_dict = read_state_dict(source)
    meta = load_prepared(data_folder).meta
    diffusion = spec["diffusion"]
    flags = with_geometry(
        spec["model"], meta["resolution"], meta["channels"], diffusion.get("learn_sigma", LEARN_SIGMA)
    )
    problem = fit_problem(state_dict, flags)
    if problem is not None:
        flag = likely_flag(state_dict, flags)
        hint = f"it fits with {flag}: set that model flag" if flag else "no single flag change makes it fit"
        raise P2Error(f"{source} does not fit this run's model flags: {problem}; {hint}")
    model = create_model(**flags)
    model.load_state_dict(state_dict, strict=True)
    process_of(diffusion)  # the process settings are valid (the model alone could not say)
    released.record(source, digest)  # the file is what it claims to be: from now on, only this file under its name
    imported = {"source": str(source), "sha256": digest, "bytes": source.stat().st_size}
    precision = spec.get("precision", "fp32")
    if precision not in RESOLVED_PRECISIONS:
        raise P2Error(f"an imported model's precision is one of {', '.join(RESOLVED_PRECISIONS)}, not {precision!r}")
    resolved = {"model": flags, "diffusion": diffusion, "seed": spec.get("seed", 0), "imported": imported}
    resolved["precision"] = precision
    origin = provenance.record(pick_device("cpu"), precision)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / EMA_FILE
    try:
        save_checkpoint(final, "ema", spec=resolved, state_dict=model.state_dict(), step=None, provenance=origin)
        write_run_file(out_dir, resolved, origin)
    except BaseException:
        final.unlink(missing_ok=True)  # both files or neither
        raise
    return final


def _shapes(flags: dict) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of the UNet of ``flags``, built on the meta device (no memory, milliseconds)."""
    with torch.device("meta"):
        model = create_model(**flags)
    return {name: tuple(value.shape) for name, value in model.state_dict().items()}
