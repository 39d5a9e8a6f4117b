"""The training loop: AdamW, EMA, atomic checkpoints, exact resume, progress bar and CSV log.

Output folder of a run::

    run.json             the resolved spec, host, device, process count and provenance (read by ``p2core runs``)
    checkpoint.pt        latest full state (model, EMA, optimizer, step); resumed automatically
    train.csv            one row per log interval: step, loss terms, loss by quarter of t, img/s
    ema_step{N}.pt       EMA weights kept at the spec's ``snapshot_steps`` (FID during training)
    ema.pt               final EMA weights, written last: its presence means the run is complete

Every random draw of step ``s`` (batch, flips, timesteps, noise, dropout) is seeded by ``(seed, s)``
(:mod:`p2core.seeding`), so a run killed at any moment and restarted ends with bit-identical weights on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from p2core import provenance
from p2core.atomic import atomic_write_text
from p2core.checkpoint import load_checkpoint, load_weights, save_checkpoint
from p2core.data import load_prepared
from p2core.device import PRECISIONS, autocast, check_layout, pick_device, resolve_precision, use_channels_last
from p2core.distributed import Ranks, init_from_environment, shutdown
from p2core.errors import CheckpointError, P2Error, TrainingDiverged
from p2core.loader import TrainingBatches
from p2core.lock import FileLock
from p2core.progress import progress_bar
from p2core.restore import build
from p2core.seeding import derived_seed, generator
from p2core.trainlog import LOG_COLUMNS, LOG_FILE, RUN_FILE, append_row, truncate_after
from p2core.unet import with_geometry


@dataclass
class TrainSpec:
    """Everything that defines a training run (and so its checkpoints).

    ``model``: :func:`p2core.unet.create_model` arguments (``image_size``/``in_channels`` default to the data's);
    ``diffusion``: :func:`p2core.diffusion.create_diffusion` arguments (schedule, weighting, ...);
    ``steps``: optimizer updates; ``batch_size``: images per update (global, over all processes);
    ``microbatch``: images per forward/backward pass in each process (gradients accumulate over the microbatches of
    an update, so a large batch fits a small GPU; ``None``: the process's whole share at once);
    ``lr``: AdamW learning rate (constant);
    ``ema_rate``: EMA decay per update; ``ema_bias_correction``: average the trained weights only (after update n
    the plain EMA still gives the random initialisation the weight ``ema_rate**n``, 5% after 600 updates of 0.995;
    the correction divides it out as Adam does for its moments; negligible once n >> 1 / (1 - ema_rate));
    ``save_every``/``log_every``: in updates;
    ``snapshot_steps``: updates after which the EMA weights are kept as ``ema_step{N}.pt``;
    ``precision``: ``fp32``, ``bf16`` (autocast) or ``auto`` (bf16 where the GPU or CPU has native bf16, else
    fp32; see :func:`p2core.device.resolve_precision`); ``channels_last``: NHWC memory layout, ``auto`` where it was
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
        return with_geometry(self.model, resolution, channels, self.diffusion.get("learn_sigma", True))


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


class _StopFlag:
    """Set by SIGTERM/SIGUSR1 (a scheduler's preemption warning): the loop checkpoints and exits at a step end."""

    def __init__(self):
        self.signal_name: str | None = None

    def __enter__(self):
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be installed from the main thread
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Preempted(P2Error):
    """Training stopped on a signal after saving a checkpoint; rerunning resumes it."""


def train(
    spec: TrainSpec, data_folder: str | Path, out_dir: str | Path, device: str = "auto", progress: bool = True
) -> Path:
    """Train (or resume) a run into ``out_dir``; returns the path of the final ``ema.pt``.

    Under ``torchrun`` with several processes the global ``batch_size`` is split across them (see
    :mod:`p2core.distributed`); rank 0 writes every file. Rank 0 holds ``out_dir/.train.lock`` while it runs: a
    second ``train`` on the same folder (a duplicated requeue) exits with :class:`~p2core.errors.Locked`.
    """
    out_dir = Path(out_dir)
    ranks, device = init_from_environment(pick_device(device))
    try:
        with FileLock(out_dir / ".train.lock") if ranks.is_main else contextlib.nullcontext():
            if ranks.is_main:
                print(f"training {out_dir} with {ranks.world} process(es) on {device}", flush=True)
            return _train(spec, data_folder, out_dir, device, ranks, progress and ranks.is_main)
    finally:
        shutdown(ranks)


def _train(spec: TrainSpec, data_folder, out_dir: Path, device: torch.device, ranks: Ranks, progress: bool) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(spec, load_prepared(data_folder), out_dir, device, ranks)
    bar = progress_bar(total=spec.steps, initial=run.start, desc=f"train {out_dir}", disable=not progress, unit="step")
    with _StopFlag() as stop:
        for step in range(run.start, spec.steps):
            run.update(step)
            done = step + 1
            bar.update(1)
            stopping = ranks.any(stop.signal_name is not None, device)
            saving = done % spec.save_every == 0 or done == spec.steps or stopping
            if done % spec.log_every == 0 or saving:
                row = run.log(done)
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.1f}")
            if done in spec.snapshot_steps:
                run.save_ema(f"ema_step{done}.pt", done)
            if saving:
                run.save_checkpoint(done)
            if stopping and done < spec.steps:
                bar.close()
                ranks.barrier()
                raise Preempted(
                    f"stopped by {stop.signal_name or 'a signal'} after step {done}; checkpoint saved, rerun to resume"
                )
    bar.close()
    run.save_ema("ema.pt", spec.steps)
    ranks.barrier()
    return out_dir / "ema.pt"


class _Run:
    """The state of one training run (model, EMA, optimizer, data stream, log statistics) and its step, log and save
    pieces. Rank 0 alone writes files."""

    def __init__(self, spec: TrainSpec, data, out_dir: Path, device: torch.device, ranks: Ranks):
        self.spec, self.out_dir, self.device, self.ranks = spec, out_dir, device, ranks
        self.resolved = {**spec.as_dict(), "model": spec.model_kwargs(data.meta["resolution"], data.meta["channels"])}
        self.local = ranks.local_slice(spec.batch_size)
        torch.manual_seed(derived_seed(spec.seed, "init"))
        self.model, self.diffusion = build(self.resolved)
        self.model.to(device)
        self.channels_last = use_channels_last(spec.channels_last, device, "train")
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = adamw(self.model.parameters(), spec.lr, spec.weight_decay, device)
        self.start = _resume(out_dir / "checkpoint.pt", self.resolved, self.model, self.ema, self.optimizer)
        if ranks.is_main:
            _write_run_file(out_dir, self.resolved, device, ranks, self.channels_last)
            truncate_after(out_dir / LOG_FILE, self.start)
            if self.start:
                print(f"resuming from the checkpoint of step {self.start}", flush=True)
        cuda_ids = [device.index] if device.type == "cuda" else None
        self.network = self.model if ranks.world == 1 else DistributedDataParallel(self.model, device_ids=cuda_ids)
        self.batches = TrainingBatches(data.images, spec.batch_size, spec.seed, data.flip)
        self.stats = _IntervalStats(self.diffusion.num_timesteps, device, ranks)
        self.mixed_precision = autocast(spec.precision, device)

    def draw(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This process's share of step ``step``'s images, timesteps and noise; every draw seeded by (seed, step)."""
        gen = generator(self.spec.seed, "step", step)
        x = self.batches.batch(step, gen)
        t = torch.randint(self.diffusion.num_timesteps, (self.spec.batch_size,), generator=gen)
        noise = torch.randn(x.shape, generator=gen)
        torch.manual_seed(derived_seed(self.spec.seed, "step", step))  # dropout
        x, noise = (
            v[self.local].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            for v in (x, noise)
        )
        return x, t[self.local].to(self.device, non_blocking=True), noise

    def update(self, step: int) -> None:
        """One optimizer update (gradients accumulated over microbatches) and the EMA after it."""
        x, t, noise = self.draw(step)
        self.optimizer.zero_grad(set_to_none=True)
        for part, last in _microbatches(len(t), self.spec.microbatch):
            # DDP averages the accumulated gradients over processes once, in the last microbatch's backward
            with self.network.no_sync() if self.ranks.world > 1 and not last else contextlib.nullcontext():
                with self.mixed_precision:
                    losses = self.diffusion.training_losses(self.network, x[part], t[part], noise[part])
                (losses["loss"].sum() / len(t)).backward()
            self.stats.add(losses, t[part])
        self.optimizer.step()
        _update_ema(self.ema, self.model, self.spec.ema_rate, step + 1 if self.spec.ema_bias_correction else None)

    def log(self, done: int) -> dict:
        """Close a log interval: a ``train.csv`` row (all ranks' samples), stopping on a non-finite loss."""
        row = self.stats.flush(done)
        if self.ranks.is_main:
            append_row(self.out_dir / LOG_FILE, row)  # a non-finite row too: `p2core runs` reports "diverged"
        _check_finite(row, self.out_dir, done)
        return row

    def save_ema(self, name: str, done: int) -> None:
        """EMA weights alone (``ema_step{N}.pt``, ``ema.pt``), refused when any of them is not finite."""
        _check_finite_weights(self.ema, self.out_dir, done)
        if self.ranks.is_main:
            state = self.ema.state_dict()
            save_checkpoint(
                self.out_dir / name,
                "ema",
                spec=self.resolved,
                state_dict=state,
                step=done,
                provenance=self.provenance(),
            )

    def save_checkpoint(self, done: int) -> None:
        """Everything a resume needs, in ``checkpoint.pt``."""
        _check_finite_weights(self.ema, self.out_dir, done)
        if self.ranks.is_main:
            save_checkpoint(
                self.out_dir / "checkpoint.pt",
                "train",
                spec=self.resolved,
                model=self.model.state_dict(),
                ema=self.ema.state_dict(),
                optimizer=self.optimizer.state_dict(),
                step=done,
                provenance=self.provenance(),
            )

    def provenance(self) -> dict:
        """The provenance record of a file written now, with this run's device and precision."""
        return provenance.record(self.device, resolve_precision(self.spec.precision, self.device))


def _microbatches(count: int, size: int | None) -> list[tuple[slice, bool]]:
    """``(slice, is_last)`` of consecutive parts of ``count`` samples with at most ``size`` each (one part if None)."""
    size = size or count
    return [(slice(lo, min(lo + size, count)), lo + size >= count) for lo in range(0, count, size)]


def _resume(path: Path, resolved: dict, model, ema, optimizer) -> int:
    """Restore state from ``path`` if it exists; returns the step to continue from (0 for a new run)."""
    if not path.exists():
        return 0
    state = load_checkpoint(path, "train")
    # a key newer than the checkpoint had its default then
    stored = {f.name: f.default for f in dataclasses.fields(TrainSpec)} | state["spec"]
    # only the length of the run may change between a checkpoint and its continuation
    differing = sorted(
        k
        for k in resolved
        if k not in ("steps", "snapshot_steps", "save_every", "log_every") and stored.get(k) != resolved[k]
    )
    if differing:
        raise CheckpointError(
            f"{path} belongs to a run with different settings ({', '.join(differing)}); use another output folder"
        )
    if state["step"] > resolved["steps"]:
        raise CheckpointError(f"{path} is at step {state['step']}, beyond the requested {resolved['steps']} steps")
    load_weights(model, state["model"], path)
    load_weights(ema, state["ema"], path)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def adamw(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step on CPU and CUDA (on the CPU the default per-tensor loop cost as much
    as 5% of the embedded default's training step; same update rule)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda"))


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, rate: float, updates: int | None = None) -> None:
    """``ema <- rate * ema + (1 - rate) * params`` for every parameter; with ``updates`` (the count including this
    one) bias-corrected: ``1 - rate`` becomes ``(1 - rate) / (1 - rate**updates)``, so the EMA is the normalised
    exponential average of the trained weights alone (the first update copies them)."""
    weight = 1.0 - rate if updates is None else (1.0 - rate) / (1.0 - rate**updates)
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), weight)


class _IntervalStats:
    """Loss sums over a log interval kept on the device (no per-step host sync), overall and per quarter of t;
    summed over all ranks when flushed."""

    def __init__(self, num_timesteps: int, device: torch.device, ranks: Ranks):
        self.num_timesteps = num_timesteps
        self.device = device
        self.ranks = ranks
        self._reset()

    def _reset(self):
        self.sums = torch.zeros(4, device=self.device, dtype=torch.float64)  # loss, mse, vb, mse_unweighted
        self.quarter_sums = torch.zeros(4, device=self.device, dtype=torch.float64)
        self.quarter_counts = torch.zeros(4, device=self.device, dtype=torch.float64)
        self.samples = 0
        self.started = time.perf_counter()

    def add(self, losses: dict, t: torch.Tensor) -> None:
        per_sample = torch.stack([losses[k].detach().double() for k in ("loss", "mse", "vb", "mse_unweighted")])
        self.sums += per_sample.sum(dim=1)
        quarter = t * 4 // self.num_timesteps
        self.quarter_sums.index_add_(0, quarter, per_sample[0])
        self.quarter_counts.index_add_(0, quarter, torch.ones_like(per_sample[0]))
        self.samples += len(t)

    def flush(self, step: int) -> dict:
        sums, quarter_sums, quarter_counts = (
            self.ranks.sum(v) for v in (self.sums, self.quarter_sums, self.quarter_counts)
        )
        samples = self.samples * self.ranks.world
        means = (sums / max(samples, 1)).tolist()
        quarters = (quarter_sums / quarter_counts.clamp(min=1)).tolist()
        elapsed = time.perf_counter() - self.started
        row = dict(zip(LOG_COLUMNS[1:5], means, strict=True), step=step)
        row.update({f"loss_q{i}": q for i, q in enumerate(quarters)}, img_per_s=samples / max(elapsed, 1e-9))
        self._reset()
        return row


def _check_finite(row: dict, out_dir: Path, step: int) -> None:
    if not all(map(_finite, (row["loss"], row["mse"], row["vb"]))):
        kept = out_dir / "checkpoint.pt"
        where = f"the last good checkpoint {kept} is kept" if kept.exists() else "no checkpoint was written"
        raise TrainingDiverged(
            f"training loss became {row['loss']} by step {step}; {where}; lower the learning rate or check the data"
        )


def _write_run_file(out_dir: Path, resolved: dict, device: torch.device, ranks: Ranks, channels_last: bool) -> None:
    """``run.json``: what this run is, where it runs, in which memory layout, and its provenance (commit, code
    fingerprint, versions, precision), for ``p2core runs`` (which never loads a checkpoint)."""
    info = {
        "spec": resolved,
        "host": socket.gethostname(),
        "device": str(device),
        "processes": ranks.world,
        "channels_last": channels_last,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "provenance": provenance.record(device, resolve_precision(resolved["precision"], device)),
    }
    atomic_write_text(out_dir / RUN_FILE, json.dumps(info, indent=2))


def _check_finite_weights(model: torch.nn.Module, out_dir: Path, step: int) -> None:
    """Refuse to write weights with NaN or infinite entries (a snapshot that looks complete but samples noise)."""
    bad = [
        name
        for name, value in model.state_dict().items()
        if value.is_floating_point() and not torch.isfinite(value).all()
    ]
    if bad:
        kept = out_dir / "checkpoint.pt"
        where = f"the last good checkpoint {kept} is kept" if kept.exists() else "no checkpoint was written"
        raise TrainingDiverged(
            f"EMA weights are not finite at step {step} ({len(bad)} tensors, e.g. {bad[0]}); "
            f"{where}; lower the learning rate or check the data"
        )


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")
