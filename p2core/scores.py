"""FID and KID from feature arrays, with the checks and uncertainty a reader needs to trust them.

Features are float arrays ``(N, D)``, one row per image (2048-d Inception pool features, or the 128-d domain
features). FID and KID are torch-fidelity's own formulas (:mod:`torch_fidelity.metric_fid`, ``metric_kid``), so a
number here equals torch-fidelity's on the same features; on top of them:

* :func:`check_not_degenerate`: features that barely vary over the reference set make every FID ~0 (a wrong or
  untrained extractor); that stops the evaluation instead of printing a perfect score;
* :func:`noise_floor`: FID/KID of held-out real images against the other real images, what "no difference"
  scores at the evaluation's sample count;
* :func:`bootstrap_fid`: FID of resampled (with replacement) generated sets, for an interval over samples
  (:class:`FixedReference` makes each resample one symmetric eigenproblem);
* :func:`precision_recall`: sample quality and coverage apart (FID mixes them: a set with a third noise images can
  score like a clean one), and :func:`recognisable_fraction` where a domain classifier exists.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_fidelity.metric_fid import fid_statistics_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import calculate_precision_recall_part

from p2core.errors import P2Error

KID_SUBSET_CAP = 1000
KID_SUBSETS = 100
#: improved precision and recall's k (Kynkaanniemi et al. 2019, torch-fidelity's default)
PRC_NEIGHBOURHOOD = 3
#: a domain classifier's max-probability above which an image counts as recognisable
RECOGNISABLE_CONFIDENCE = 0.9


def statistics(features: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (unbiased), both float64, accumulated over ``chunk`` rows at a time
    (shifted by the first chunk's mean against cancellation): memory is ``D x D``, never a float64 copy of all N."""
    features = np.asarray(features)
    count = len(features)
    shift = np.asarray(features[:chunk], np.float64).mean(axis=0)
    total, scatter = np.zeros_like(shift), np.zeros((len(shift), len(shift)))
    for start in range(0, count, chunk):
        block = np.asarray(features[start : start + chunk], np.float64) - shift
        total += block.sum(axis=0)
        scatter += block.T @ block
    centred_mean = total / count
    return shift + centred_mean, (scatter - count * np.outer(centred_mean, centred_mean)) / (count - 1)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FID between two Gaussians: ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (torch-fidelity's evaluation)."""
    stats = [
        {"mu": np.asarray(m, np.float64), "sigma": np.asarray(s, np.float64)} for m, s in ((mu1, sigma1), (mu2, sigma2))
    ]
    return float(fid_statistics_to_metric(stats[0], stats[1], verbose=False)["frechet_inception_distance"])


def parse_kid_subset(value: int | str | None) -> int | None:
    """A configured KID subset size: an integer (or its text), or ``auto``/None for ``min(1000, smaller set)``."""
    if value is None or value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise P2Error(f"kid_subset_size: expected an integer or 'auto', got {value!r}") from None


def kid_subset_size(requested: int | str | None, n_generated: int, n_reference: int) -> int:
    """The KID subset size: ``requested``, or ``min(1000, smaller set)`` when None or ``auto``; it must fit both
    sets."""
    smaller = min(n_generated, n_reference)
    requested = parse_kid_subset(requested)
    size = min(KID_SUBSET_CAP, smaller) if requested is None else requested
    if size < 2:
        raise P2Error(f"kid_subset_size must be >= 2, got {size}")
    if size > smaller:
        raise P2Error(
            f"kid_subset_size {size} exceeds the {smaller} images available "
            f"({n_generated} generated, {n_reference} reference); lower it or draw more samples"
        )
    return size


def kid(features1: np.ndarray, features2: np.ndarray, subset_size: int, subsets: int = KID_SUBSETS, seed: int = 2020):
    """KID (polynomial-kernel MMD^2, unbiased) mean and std over ``subsets`` random subsets of ``subset_size``."""
    result = kid_features_to_metric(
        torch.from_numpy(np.asarray(features1, np.float32)),
        torch.from_numpy(np.asarray(features2, np.float32)),
        kid_subsets=subsets,
        kid_subset_size=subset_size,
        rng_seed=seed,
        verbose=False,
    )
    return float(result["kernel_inception_distance_mean"]), float(result["kernel_inception_distance_std"])


def check_not_degenerate(mu: np.ndarray, sigma: np.ndarray, count: int, what: str) -> dict:
    """Raise :class:`P2Error` naming ``what`` when features with mean ``mu`` and covariance ``sigma`` (over ``count``
    images) hardly vary; returns the figures it checked.

    Degenerate: total variance below 1e-12 (features vanish), or below 1e-8 of the mean squared feature norm (every
    image maps to nearly the same point). A working Inception has a total variance of order 10-100 here.
    """
    total_variance = float(np.trace(sigma))
    mean_square_norm = total_variance * (count - 1) / count + float(np.square(mu).sum())
    relative = total_variance / mean_square_norm if mean_square_norm > 0 else 0.0
    if total_variance < 1e-12 or relative < 1e-8:
        raise P2Error(
            f"{what} gives near-constant features over the reference set (total variance {total_variance:.3g}, "
            f"{relative:.3g} of the mean squared norm): every FID would be ~0; check the extractor's weights file"
        )
    return {"total_variance": total_variance, "relative_variance": relative}


def noise_floor(
    features: np.ndarray, size: int, kid_subset: int | str | None, seed: int = 0, fid=None, kid_fn=None
) -> dict:
    """FID and KID of ``size`` random real images (at most half the set) against all the other real images: what
    "no difference" scores when ``size`` generated images are compared with the reference set; likewise their
    precision and recall (:func:`precision_recall`), the ceiling a perfect model reaches.

    ``fid(mu1, sigma1, mu2, sigma2)`` and ``kid_fn(features1, features2, subset_size) -> (mean, std or None)`` are the
    backend's formulas (default: torch-fidelity's, :func:`frechet_distance` and :func:`kid`)."""
    fid = fid or frechet_distance
    kid_fn = kid_fn or kid
    size = min(size, len(features) // 2)
    if size < 2:
        raise P2Error(f"a noise floor needs at least 4 reference images, got {len(features)}")
    chosen = np.zeros(len(features), bool)
    chosen[np.random.default_rng(seed).choice(len(features), size, replace=False)] = True
    first, rest = features[chosen], features[~chosen]
    kid_subset = parse_kid_subset(kid_subset)
    subset = kid_subset_size(None if kid_subset is None else min(kid_subset, size), size, len(rest))
    kid_mean, kid_std = kid_fn(first, rest, subset)
    return {
        "fid": fid(*statistics(first), *statistics(rest)),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        **{k: v for k, v in precision_recall(first, rest, seed=seed).items() if k != "prc_n_real"},
        "n_held_out": int(size),
        "n_rest": int(len(rest)),
        "kid_subset_size": int(subset),
    }


def precision_recall(
    generated: np.ndarray, real: np.ndarray, neighbourhood: int = PRC_NEIGHBOURHOOD, seed: int = 0
) -> dict:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of ``generated`` features (N, D) against ``real``
    ones (M, D), by torch-fidelity's formula on the same features as FID. Precision: the fraction of generated
    samples inside the real manifold (each real feature's ball out to its ``neighbourhood``-th nearest real
    neighbour), i.e. quality; recall: the fraction of real samples inside the generated manifold, i.e. coverage.
    The balls' radii depend on the set size, so with M > N a seeded subset of N real features stands for the real
    set. Returns ``prc_precision``, ``prc_recall`` (in [0, 1]; named apart from the numerical ``precision`` a
    result records) and ``prc_n_real``."""
    real = np.asarray(real)
    if len(real) > len(generated):
        real = real[np.random.default_rng(seed).choice(len(real), len(generated), replace=False)]
    if min(len(real), len(generated)) <= neighbourhood:
        raise P2Error(f"precision and recall need more than {neighbourhood} images per set, got {len(generated)}")
    as_tensor = lambda values: torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))  # noqa: E731
    precision, recall = calculate_precision_recall_part(as_tensor(generated), as_tensor(real), neighbourhood)
    return {"prc_precision": float(precision), "prc_recall": float(recall), "prc_n_real": int(len(real))}


def recognisable_fraction(logits: np.ndarray, confidence: float = RECOGNISABLE_CONFIDENCE) -> float:
    """The fraction of images whose classifier logits ``(N, classes)`` give some class a probability above
    ``confidence``: images a domain classifier recognises (a digit, not noise)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    return float((probabilities.max(axis=1) > confidence).mean())


class FixedReference:
    """FID against fixed reference statistics, with ``S_r^1/2`` computed once: the trace term is
    ``tr (S_r^1/2 S_g S_r^1/2)^1/2`` (a symmetric eigenproblem, equal to ``tr (S_r S_g)^1/2``)."""

    def __init__(self, mu: np.ndarray, sigma: np.ndarray):
        self.mu = np.asarray(mu, np.float64)
        values, vectors = np.linalg.eigh(np.asarray(sigma, np.float64))
        self.root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
        self.trace = float(np.trace(sigma))

    def fid(self, features: np.ndarray) -> float:
        """FID of ``features`` (N, D) against the reference."""
        return self.fid_of(*statistics(features))

    def fid_of(self, mu: np.ndarray, sigma: np.ndarray) -> float:
        """FID of a Gaussian with mean ``mu`` and covariance ``sigma`` against the reference."""
        eigenvalues = np.linalg.eigvalsh(self.root @ sigma @ self.root)
        trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())
        return float(np.square(mu - self.mu).sum()) + float(np.trace(sigma)) + self.trace - 2 * trace_sqrt


def bootstrap_fid(features: np.ndarray, reference: FixedReference, resamples: int, seed: int = 0) -> np.ndarray:
    """FIDs ``(resamples,)`` of generated sets drawn with replacement from ``features`` (N, D) against ``reference``.

    Resampled sets repeat images, so each FID is biased upwards; differences between two models' replicates (same N)
    largely cancel that bias, which is what the tables use them for."""
    rng = np.random.default_rng(seed)
    return np.array([reference.fid(features[rng.integers(0, len(features), len(features))]) for _ in range(resamples)])
