"""A training run's settings (:class:`TrainSpec`): what defines its result, and the few that only say how it executes.

Torch-free: the workflow imports it to know which settings it may change without rerunning a run
(:data:`EXECUTION_SETTINGS`, passed to jobs as scheduler resources, never as a rerun trigger).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from p2core.device import PRECISIONS, check_layout
from p2core.errors import P2Error

#: settings that say how a run executes, not what it computes: a change reruns nothing, and a resume accepts it
#: (``microbatch`` splits an update's gradient into parts that add up to the same update; the others are cadences)
EXECUTION_SETTINGS = ("microbatch", "save_every", "log_every")
#: settings that say how long a run goes on (and which EMA snapshots it keeps on the way): a checkpoint may be
#: continued under other values of these
LENGTH_SETTINGS = ("steps", "snapshot_steps")


@dataclass
class TrainSpec:
    """Everything that defines a training run (and so its checkpoints).

    ``model``: :func:`p2core.unet.create_model` arguments (``image_size``/``in_channels`` default to the data's);
    ``diffusion``: :func:`p2core.objective.create_objective` settings (schedule, weighting, ...);
    ``steps``: optimizer updates; ``batch_size``: images per update (global, over all processes);
    ``microbatch``: images per forward/backward pass in each process (gradients accumulate over the microbatches of
    an update, so a large batch fits a small GPU; ``None``: the process's whole share at once);
    ``lr``: AdamW learning rate (constant);
    ``ema_rate``: EMA decay per update; ``ema_bias_correction``: average the trained weights only (after update n
    the plain EMA still gives the random initialisation the weight ``ema_rate**n``, 5% after 600 updates of 0.995;
    the correction divides it out as Adam does for its moments; negligible once n >> 1 / (1 - ema_rate));
    ``save_every``/``log_every``: in updates (these and ``microbatch`` are :data:`EXECUTION_SETTINGS`);
    ``snapshot_steps``: updates after which the EMA weights are kept as ``ema_step{N}.pt``;
    ``precision``: ``fp32`` (TF32 off on CUDA), ``tf32`` (CUDA only), ``bf16`` (autocast) or ``auto`` (bf16 where the
    GPU or CPU has native bf16, else fp32; see :func:`p2core.device.resolve_precision`), resolved once when the run
    starts and kept by every resume; ``channels_last``: NHWC memory layout, ``auto`` where it was
    measured faster for training on this device type (:func:`p2core.device.use_channels_last`), or true/false.
    """

    model: dict
    diffusion: dict
    steps: int
    batch_size: int
    microbatch: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_rate: float = 0.9999
    ema_bias_correction: bool = False
    seed: int = 0
    save_every: int = 1000
    log_every: int = 100
    snapshot_steps: list[int] = field(default_factory=list)
    precision: str = "fp32"
    channels_last: bool | str = "auto"

    def __post_init__(self):
        try:  # YAML 1.1 reads "2e-5" as a string; accept any number-like value
            for name in ("lr", "weight_decay", "ema_rate"):
                setattr(self, name, float(getattr(self, name)))
            for name in ("steps", "batch_size", "seed", "save_every", "log_every"):
                setattr(self, name, int(getattr(self, name)))
            self.microbatch = None if self.microbatch is None else int(self.microbatch)
        except (TypeError, ValueError) as exc:
            raise P2Error(f"bad training spec: {exc}") from None
        problems = []
        if self.steps < 1 or self.batch_size < 1:
            problems.append("steps and batch_size must be >= 1")
        if self.microbatch is not None and self.microbatch < 1:
            problems.append(f"microbatch must be >= 1 (or absent), got {self.microbatch}")
        if self.save_every < 1 or self.log_every < 1:
            problems.append("save_every and log_every must be >= 1")
        if not 0 <= self.ema_rate < 1:
            problems.append(f"ema_rate must be in [0, 1), got {self.ema_rate}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        try:
            check_layout(self.channels_last)
        except P2Error as error:
            problems.append(str(error))
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if any(not 0 < s < self.steps for s in self.snapshot_steps):  # a snapshot at the last step is ema.pt
            problems.append(f"snapshot_steps must lie in 1..{self.steps - 1} (below steps={self.steps})")
        if problems:
            raise P2Error("bad training spec: " + "; ".join(problems))
        self.snapshot_steps = sorted(int(s) for s in self.snapshot_steps)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise P2Error(f"unknown training spec keys {unknown}; known: {sorted(known)}")
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(values))
        if missing:
            raise P2Error(f"training spec lacks required keys {missing}")
        return cls(**values)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def model_kwargs(self, resolution: int, channels: int) -> dict:
        """Model arguments with the data's geometry filled in (:func:`p2core.unet.with_geometry`)."""
        from p2core.diffusion import LEARN_SIGMA
        from p2core.unet import with_geometry

        return with_geometry(self.model, resolution, channels, self.diffusion.get("learn_sigma", LEARN_SIGMA))


def with_execution(values: dict, **settings: int | None) -> dict:
    """Spec ``values`` with the :data:`EXECUTION_SETTINGS` given in ``settings`` set: ``None`` leaves a setting as
    ``values`` has it, ``0`` gives it :class:`TrainSpec`'s default (for ``microbatch``: the process's whole share at
    once). What the workflow passes apart from the spec, so that a change of them is no rerun trigger."""
    unknown = sorted(set(settings) - set(EXECUTION_SETTINGS))
    if unknown:
        raise P2Error(f"{', '.join(unknown)} are not execution settings ({', '.join(EXECUTION_SETTINGS)})")
    merged = dict(values)
    for key, value in settings.items():
        if value == 0:
            merged.pop(key, None)
        elif value is not None:
            merged[key] = value
    return merged


def load_spec(text: str) -> dict:
    """A training spec (for :meth:`TrainSpec.from_dict`) given inline as JSON/YAML text, or as a JSON/YAML file."""
    import yaml

    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise P2Error(f"spec file {path} does not exist (give a path, or inline JSON starting with '{{')")
        text = path.read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    try:
        value = yaml.safe_load(text) if value is None else value
    except yaml.YAMLError as exc:
        raise P2Error(f"spec is neither a readable file nor valid JSON/YAML: {exc}".splitlines()[0]) from None
    if not isinstance(value, dict):
        raise P2Error("spec must be a mapping (JSON object or YAML dict)")
    return value
