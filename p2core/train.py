"""The training loop: AdamW, EMA, atomic checkpoints, exact resume, progress bar and CSV log.

Output folder of a run::

    run.json             the resolved spec, host, device, process count and provenance (read by ``p2core runs``)
    checkpoint.pt        latest full state (model, EMA, optimizer, step); resumed automatically
    train.csv            one row per log interval: step, loss terms, loss by quarter of t, img/s
    ema_step{N}.pt       EMA weights kept at the spec's ``snapshot_steps`` (FID during training)
    ema.pt               final EMA weights, written last: its presence means the run is complete

Every random draw of step ``s`` (batch, flips, timesteps, noise, dropout) is seeded by ``(seed, s)``
(:mod:`p2core.seeding`), so a run killed at any moment and restarted ends with bit-identical weights on the CPU.
A run has one precision: ``auto`` is resolved when it starts and stored in its spec; a resume keeps it, on whatever
device it continues (:func:`run_precision`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import signal
import threading
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from p2core import provenance
from p2core.checkpoint import load_checkpoint, load_weights, save_checkpoint
from p2core.data import load_prepared
from p2core.device import native_bf16, pick_device, precision_context, resolve_precision, use_channels_last
from p2core.distributed import Ranks, init_from_environment, shutdown
from p2core.errors import CheckpointError, P2Error, TrainingDiverged
from p2core.loader import TrainingBatches
from p2core.lock import FileLock
from p2core.objective import create_objective
from p2core.progress import progress_bar
from p2core.restore import trained_precision
from p2core.seeding import derived_seed, generator
from p2core.trainlog import (
    CHECKPOINT_FILE,
    EMA_FILE,
    LOG_COLUMNS,
    LOG_FILE,
    append_row,
    snapshot_file,
    truncate_after,
    write_run_file,
)
from p2core.trainspec import EXECUTION_SETTINGS, LENGTH_SETTINGS, TrainSpec
from p2core.unet import create_model


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


class StoppedBeforeTimeLimit(Preempted):
    """Training reached its ``stop_at`` time and saved a checkpoint (a segment of a run longer than its job's time
    limit); rerunning resumes it."""


def train(
    spec: TrainSpec,
    data_folder: str | Path,
    out_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    stop_at: float | None = None,
) -> Path:
    """Train (or resume) a run into ``out_dir``; returns the path of the final ``ema.pt``.

    ``stop_at`` (Unix seconds, e.g. :func:`p2core.timelimit.stop_time`): the first step that ends after it saves a
    checkpoint and raises :class:`StoppedBeforeTimeLimit`; a SIGTERM or SIGUSR1 does the same with :class:`Preempted`.
    Neither changes the result: the resumed run ends with the weights of an uninterrupted one.

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
            return _train(spec, data_folder, out_dir, device, ranks, progress and ranks.is_main, stop_at)
    finally:
        shutdown(ranks)


def _train(
    spec: TrainSpec, data_folder, out_dir: Path, device: torch.device, ranks: Ranks, progress: bool, stop_at
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(spec, load_prepared(data_folder), out_dir, device, ranks)
    bar = progress_bar(total=spec.steps, initial=run.start, desc=f"train {out_dir}", disable=not progress, unit="step")
    with _StopFlag() as stop:
        for step in range(run.start, spec.steps):
            run.update(step)
            done = step + 1
            bar.update(1)
            out_of_time = stop_at is not None and time.time() >= stop_at
            stopping = ranks.any(stop.signal_name is not None or out_of_time, device)
            saving = done % spec.save_every == 0 or done == spec.steps or stopping
            if done % spec.log_every == 0 or saving:
                row = run.log(done)
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.1f}")
            if done in spec.snapshot_steps:
                run.save_ema(snapshot_file(done), done)
            if saving:
                run.save_checkpoint(done)
            if stopping and done < spec.steps:
                bar.close()
                ranks.barrier()
                timed_out = ranks.any(out_of_time, device)  # a collective: every rank calls it
                if timed_out and stop.signal_name is None:
                    raise StoppedBeforeTimeLimit(
                        f"stopped before the job's time limit after step {done}; checkpoint saved, rerun to resume"
                    )
                raise Preempted(
                    f"stopped by {stop.signal_name or 'a signal'} after step {done}; checkpoint saved, rerun to resume"
                )
    bar.close()
    run.save_ema(EMA_FILE, spec.steps)
    ranks.barrier()
    return out_dir / EMA_FILE


class _Run:
    """The state of one training run (model, EMA, optimizer, data stream, log statistics) and its step, log and save
    pieces. Rank 0 alone writes files."""

    def __init__(self, spec: TrainSpec, data, out_dir: Path, device: torch.device, ranks: Ranks):
        self.spec, self.out_dir, self.device, self.ranks = spec, out_dir, device, ranks
        kept = out_dir / CHECKPOINT_FILE
        stored = load_checkpoint(kept, "train") if kept.exists() else None
        self.precision = run_precision(spec.precision, stored, device)
        self.resolved = {
            **spec.as_dict(),
            "model": spec.model_kwargs(data.meta["resolution"], data.meta["channels"]),
            "precision": self.precision,
        }
        self.local = ranks.local_slice(spec.batch_size)
        torch.manual_seed(derived_seed(spec.seed, "init"))
        self.model = create_model(**self.resolved["model"])
        self.objective = create_objective(self.resolved["diffusion"])
        self.model.to(device)
        self.channels_last = use_channels_last(spec.channels_last, device, "train")
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.learned = self.objective.trainable(device)  # the learned weighting's u(t), or nothing
        self.optimizer = adamw([*self.model.parameters(), *self.learned], spec.lr, spec.weight_decay, device)
        self.start = _resume(stored, kept, self.resolved, self.model, self.ema, self.optimizer, self.objective)
        if ranks.is_main:
            _write_run_file(out_dir, self.resolved, device, ranks, self.channels_last)
            truncate_after(out_dir / LOG_FILE, self.start)
            if self.start:
                print(f"resuming from the checkpoint of step {self.start} in {self.precision}", flush=True)
            if self.precision == "bf16" and not native_bf16(device):
                print(f"note: {device} emulates bf16 (much slower than fp32); the run keeps its precision", flush=True)
        cuda_ids = [device.index] if device.type == "cuda" else None
        self.network = self.model if ranks.world == 1 else DistributedDataParallel(self.model, device_ids=cuda_ids)
        self.batches = TrainingBatches(data.images, spec.batch_size, spec.seed, data.flip)
        self.stats = _IntervalStats(self.objective.process.num_timesteps, device, ranks)
        self.mixed_precision = precision_context(self.precision, device)

    def draw(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This process's share of step ``step``'s images, timesteps and noise; every draw seeded by (seed, step)."""
        gen = generator(self.spec.seed, "step", step)
        x = self.batches.batch(step, gen)
        t = self.objective.draw_timesteps(self.spec.batch_size, gen)
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
                    losses = self.objective.losses(self.network, x[part], t[part], noise[part])
                (losses["loss"].sum() / len(t)).backward()
            self.stats.add(losses, t[part])
        for parameter in self.learned:  # outside the DDP model: averaged over the ranks here
            parameter.grad = self.ranks.sum(parameter.grad) / self.ranks.world
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
                **self.objective_state(),
            )

    def save_checkpoint(self, done: int) -> None:
        """Everything a resume needs, in ``checkpoint.pt``."""
        _check_finite_weights(self.ema, self.out_dir, done)
        if self.ranks.is_main:
            save_checkpoint(
                self.out_dir / CHECKPOINT_FILE,
                "train",
                spec=self.resolved,
                model=self.model.state_dict(),
                ema=self.ema.state_dict(),
                optimizer=self.optimizer.state_dict(),
                step=done,
                provenance=self.provenance(),
                **self.objective_state(),
            )

    def objective_state(self) -> dict:
        """The learned weighting's state (``uncertainty``) where the objective has one; nothing otherwise."""
        head = self.objective.uncertainty
        return {} if head is None else {"uncertainty": head.state_dict()}

    def provenance(self) -> dict:
        """The provenance record of a file written now, with this run's device and precision."""
        return provenance.record(self.device, self.precision)


def _microbatches(count: int, size: int | None) -> list[tuple[slice, bool]]:
    """``(slice, is_last)`` of consecutive parts of ``count`` samples with at most ``size`` each (one part if None)."""
    size = size or count
    return [(slice(lo, min(lo + size, count)), lo + size >= count) for lo in range(0, count, size)]


def run_precision(requested: str, stored: dict | None, device: torch.device) -> str:
    """The precision a run computes in: for a new run (``stored`` None) ``requested`` resolved on ``device``
    (:func:`p2core.device.resolve_precision`); for a resumed one, the precision its checkpoint ``stored`` was trained
    in, whatever device it continues on. A requested precision other than ``auto`` that differs from it, or one the
    device cannot run (tf32 off CUDA), is a one-line :class:`CheckpointError`/:class:`P2Error`."""
    if stored is None:
        return resolve_precision(requested, device)
    trained = trained_precision(stored)
    if requested not in ("auto", trained):
        raise CheckpointError(
            f"this run was trained in {trained} until step {stored['step']}; it cannot continue in {requested} "
            f"(set precision to {trained} or auto, or use another output folder)"
        )
    return resolve_precision(trained, device)


def _resume(state: dict | None, path: Path, resolved: dict, model, ema, optimizer, objective) -> int:
    """Restore the checkpoint ``state`` (read from ``path``), if any; returns the step to continue from (0 for a new
    run). Only the :data:`~p2core.trainspec.LENGTH_SETTINGS` and :data:`~p2core.trainspec.EXECUTION_SETTINGS` may
    differ between a checkpoint and its continuation."""
    if state is None:
        return 0
    # a key newer than the checkpoint had its default then
    stored = {f.name: f.default for f in dataclasses.fields(TrainSpec)} | state["spec"]
    may_change = LENGTH_SETTINGS + EXECUTION_SETTINGS + ("precision",)  # checked by run_precision
    differing = sorted(k for k in resolved if k not in may_change and stored.get(k) != resolved[k])
    if differing:
        raise CheckpointError(
            f"{path} belongs to a run with different settings ({', '.join(differing)}); use another output folder"
        )
    if state["step"] > resolved["steps"]:
        raise CheckpointError(f"{path} is at step {state['step']}, beyond the requested {resolved['steps']} steps")
    load_weights(model, state["model"], path)
    load_weights(ema, state["ema"], path)
    if objective.uncertainty is not None:
        load_weights(objective.uncertainty, state["uncertainty"], path)
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
        kept = out_dir / CHECKPOINT_FILE
        where = f"the last good checkpoint {kept} is kept" if kept.exists() else "no checkpoint was written"
        raise TrainingDiverged(
            f"training loss became {row['loss']} by step {step}; {where}; lower the learning rate or check the data"
        )


def _write_run_file(out_dir: Path, resolved: dict, device: torch.device, ranks: Ranks, channels_last: bool) -> None:
    """``run.json``: what this run is, where it runs, in which memory layout, and its provenance (commit, code
    fingerprint, versions, precision), for ``p2core runs`` (which never loads a checkpoint)."""
    origin = provenance.record(device, resolved["precision"])
    write_run_file(out_dir, resolved, origin, device=str(device), processes=ranks.world, channels_last=channels_last)


def _check_finite_weights(model: torch.nn.Module, out_dir: Path, step: int) -> None:
    """Refuse to write weights with NaN or infinite entries (a snapshot that looks complete but samples noise)."""
    bad = [
        name
        for name, value in model.state_dict().items()
        if value.is_floating_point() and not torch.isfinite(value).all()
    ]
    if bad:
        kept = out_dir / CHECKPOINT_FILE
        where = f"the last good checkpoint {kept} is kept" if kept.exists() else "no checkpoint was written"
        raise TrainingDiverged(
            f"EMA weights are not finite at step {step} ({len(bad)} tensors, e.g. {bad[0]}); "
            f"{where}; lower the learning rate or check the data"
        )


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")
