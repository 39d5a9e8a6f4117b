"""Respacing: a sampler with fewer steps runs on a subset of the training timesteps (ADM semantics), and the one
grammar of sampler names (``ddpm250``, ``ddim25``, ``dpmpp2m20``, ``ddpm10,10,10``) that the CLI, the config check and
the Snakefile's wildcard all read from here. Torch-free: the workflow imports it."""

from __future__ import annotations

import re

import numpy as np

SAMPLERS = ("ddpm", "ddim", "dpmpp2m")  # ancestral, DDIM and DPM-Solver++(2M), all run on a respaced process
#: A sampler name: a kind, then nothing (every step), a step count, or comma-separated section counts.
SAMPLER_PATTERN = rf"(?:{'|'.join(SAMPLERS)})(?:\d+(?:,\d+)*)?"


def space_timesteps(
    num_timesteps: int, spec: str | int | list[int], alphas_cumprod: np.ndarray | None = None
) -> set[int]:
    """Timesteps of the original process to keep, as ADM chooses them.

    ``spec`` forms:
      * ``"250"`` or ``250``: 250 evenly spaced steps over the whole process;
      * ``"10,15,20"``: the process cut into as many equal sections (the first ``T % n`` sections one step
        longer), each with its own count; positions inside a section are ``round(i * stride)`` with Python's
        ``round`` (half to even) and ``stride = (size - 1) / (count - 1)``;
      * ``"ddim25"``: ``range(0, T, stride)`` for the smallest integer stride giving exactly 25 steps;
      * ``"logsnr20"``: 20 steps evenly spaced in log-SNR ``log(abar / (1 - abar)) / 2`` from step ``T-1`` to step 0
        (DPM-Solver's "logSNR" spacing; needs the process's ``alphas_cumprod``), see :func:`logsnr_steps`.

    Raises ``ValueError`` with the reason when a spec cannot be met.
    """
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("ddim"):
            return _ddim_steps(num_timesteps, text)
        if text.startswith("logsnr"):
            if alphas_cumprod is None:
                raise ValueError(f"respacing spec {spec!r} needs the process's alphas_cumprod")
            return logsnr_steps(alphas_cumprod, _count(text, "logsnr"))
        try:
            section_counts = [int(part) for part in text.split(",")]
        except ValueError:
            raise ValueError(
                f"bad respacing spec {spec!r}: use a count ('250'), section counts ('10,10,10') or 'ddimN'"
            ) from None
    elif isinstance(spec, int):
        section_counts = [spec]
    else:
        section_counts = [int(count) for count in spec]
    if any(count < 1 for count in section_counts):
        raise ValueError(f"bad respacing spec {spec!r}: every section needs at least one step")

    size_per_section, extra = divmod(num_timesteps, len(section_counts))
    steps: list[int] = []
    start = 0
    for i, count in enumerate(section_counts):
        size = size_per_section + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps from a section of {size} (respacing spec {spec!r})")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        steps += [start + round(j * stride) for j in range(count)]
        start += size
    return set(steps)


def _count(text: str, prefix: str) -> int:
    try:
        return int(text[len(prefix) :])
    except ValueError:
        raise ValueError(f"bad respacing spec {text!r}: expected '{prefix}N' with an integer N") from None


def logsnr_steps(alphas_cumprod: np.ndarray, count: int) -> set[int]:
    """``count`` distinct timesteps whose log-SNR is as evenly spaced as integer steps allow, always including the
    first (0) and last (``T-1``) step: each target log-SNR goes to the nearest step, then collisions are pushed apart
    (a step is never reused, so exactly ``count`` model evaluations)."""
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    num_timesteps = len(alphas_cumprod)
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"cannot take {count} log-SNR spaced steps from a process of {num_timesteps}")
    log_snr = 0.5 * (np.log(alphas_cumprod) - np.log1p(-alphas_cumprod))  # decreasing in t
    targets = np.linspace(log_snr[-1], log_snr[0], count)
    nearest = [int(np.argmin(np.abs(log_snr - target))) for target in targets]  # from T-1 down to 0
    steps = []
    for i, step in enumerate(nearest):
        highest = steps[-1] - 1 if steps else num_timesteps - 1
        steps.append(max(min(step, highest), count - 1 - i))
    return set(steps)


def _ddim_steps(num_timesteps: int, text: str) -> set[int]:
    desired = _count(text, "ddim")
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired:
            return set(range(0, num_timesteps, stride))
    raise ValueError(f"cannot create exactly {desired} steps with an integer stride from {num_timesteps}")


def respaced_betas(alphas_cumprod: np.ndarray, kept_timesteps: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """Betas of the process restricted to ``kept_timesteps``, and the map from new to original index.

    ``beta'_i = 1 - abar_{s_i} / abar_{s_{i-1}}`` (with ``abar_{s_{-1}} = 1``), so the respaced process has exactly
    the original ``abar`` on the kept steps. Returns ``(betas, timestep_map)``, both shape ``(len(kept),)``;
    the model is always called with ``timestep_map[i]``, the original index.
    """
    timestep_map = np.array(sorted(kept_timesteps), dtype=np.int64)
    if len(timestep_map) == 0 or timestep_map[0] < 0 or timestep_map[-1] >= len(alphas_cumprod):
        raise ValueError("kept timesteps must be a non-empty subset of 0..T-1")
    kept = np.asarray(alphas_cumprod, dtype=np.float64)[timestep_map]
    previous = np.append(1.0, kept[:-1])
    return 1.0 - kept / previous, timestep_map


def parse_sampler(name: str) -> tuple[str, str]:
    """Split a sampler name (:data:`SAMPLER_PATTERN`) into ``(kind, respacing spec)``.

    ``"ddpm250"`` -> ancestral on 250 evenly spaced steps; ``"ddpm10,10,10"`` -> ancestral on sections;
    ``"ddim25"`` -> DDIM (eta 0) on ADM's stride spacing with exactly 25 steps; ``"ddim10,20"`` -> DDIM on sections;
    ``"dpmpp2m20"`` -> DPM-Solver++(2M) on 20 steps evenly spaced in log-SNR (``"logsnr20"``, 20 model evaluations);
    ``"dpmpp2m10,10"`` -> DPM-Solver++(2M) on ADM sections;
    a bare ``"ddpm"``/``"ddim"``/``"dpmpp2m"`` uses every step.
    """
    if re.fullmatch(SAMPLER_PATTERN, name) is None:
        raise ValueError(
            f"bad sampler name {name!r}: expected a kind ({', '.join(SAMPLERS)}) followed by a step count or "
            "comma-separated section counts, e.g. ddpm250, ddim25, dpmpp2m20, ddpm10,10,10"
        )
    kind = next(kind for kind in SAMPLERS if name.startswith(kind))  # no kind is a prefix of another
    spec = name[len(kind) :]
    if spec.isdigit() and kind == "ddim":
        spec = f"ddim{spec}"
    if spec.isdigit() and kind == "dpmpp2m":
        spec = f"logsnr{spec}"
    return kind, spec


def sampler_steps(name: str, num_timesteps: int) -> int:
    """Model evaluations of one image drawn with sampler ``name`` on a ``num_timesteps`` process."""
    _, spec = parse_sampler(name)
    if spec.startswith("logsnr"):
        count = _count(spec, "logsnr")
        if not 1 <= count <= num_timesteps:
            raise ValueError(f"cannot take {count} log-SNR spaced steps from a process of {num_timesteps}")
        return count
    return len(space_timesteps(num_timesteps, spec)) if spec else num_timesteps
