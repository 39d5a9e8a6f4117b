"""Respacing: a sampler with fewer steps runs on a subset of the training timesteps (ADM semantics)."""

from __future__ import annotations

import numpy as np

SAMPLERS = ("ddpm", "ddim")  # ancestral and DDIM, both run on a respaced process


def space_timesteps(num_timesteps: int, spec: str | int | list[int]) -> set[int]:
    """Timesteps of the original process to keep, as ADM chooses them.

    ``spec`` forms:
      * ``"250"`` or ``250``: 250 evenly spaced steps over the whole process;
      * ``"10,15,20"``: the process cut into as many equal sections (the first ``T % n`` sections one step
        longer), each with its own count; positions inside a section are ``round(i * stride)`` with Python's
        ``round`` (half to even) and ``stride = (size - 1) / (count - 1)``;
      * ``"ddim25"``: ``range(0, T, stride)`` for the smallest integer stride giving exactly 25 steps.

    Raises ``ValueError`` with the reason when a spec cannot be met.
    """
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("ddim"):
            return _ddim_steps(num_timesteps, text)
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


def _ddim_steps(num_timesteps: int, text: str) -> set[int]:
    try:
        desired = int(text[len("ddim") :])
    except ValueError:
        raise ValueError(f"bad respacing spec {text!r}: expected 'ddimN' with an integer N") from None
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
    """Split a sampler name into ``(kind, respacing spec)``.

    ``"ddpm250"`` -> ancestral on 250 evenly spaced steps; ``"ddpm10,10,10"`` -> ancestral on sections;
    ``"ddim25"`` -> DDIM (eta 0) on ADM's stride spacing with exactly 25 steps; ``"ddim10,20"`` -> DDIM on sections;
    a bare ``"ddpm"``/``"ddim"`` uses every step.
    """
    for kind in SAMPLERS:
        if name.startswith(kind):
            spec = name[len(kind) :]
            if kind == "ddim" and spec.isdigit():
                spec = f"ddim{spec}"
            return kind, spec
    raise ValueError(f"bad sampler name {name!r}: expected 'ddpm<spec>' or 'ddim<spec>', e.g. ddpm250, ddim25")


def sampler_steps(name: str, num_timesteps: int) -> int:
    """Model evaluations of one image drawn with sampler ``name`` on a ``num_timesteps`` process."""
    _, spec = parse_sampler(name)
    return len(space_timesteps(num_timesteps, spec)) if spec else num_timesteps
