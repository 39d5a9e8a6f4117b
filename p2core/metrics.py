"""Feature extraction, reference statistics and FID/KID evaluation with two backends; LPIPS from local files.

Two steps, one pipeline rule each:

1. :func:`write_reference` (``p2core reference``), once per (dataset, backend, extractor): the real images' features
   (or clean-fid's published statistics), their mean and covariance, a degenerate-feature check and the real-vs-real
   noise floor, in one ``.npz``;
2. :func:`evaluate_samples` (``p2core evaluate``), per sample set: its features against those files: FID, KID per
   backend, a bootstrap interval of the FID over samples, in a metrics JSON that names backend, mode, extractor,
   weights (verified or not), resize, reference statistics, counts and the noise floor.

Backends:

* ``torch-fidelity``: torch-fidelity's feature extractors and FID/KID formulas. Extractors: ``inception-v3-compat``
  (its port of the TF Inception, bilinear resize to 299 px as TF 1.x did) or ``domain``
  (:class:`p2core.features.DomainFeatureExtractor`, a classifier trained on the dataset's labels for the embedded
  data: **not comparable to Inception FID**; the JSON says so).
* ``clean-fid``: :mod:`p2core.clean_fid`, the authors' metric (clean mode, published FFHQ statistics).

Weights and statistics files are found offline and verified (:mod:`p2core.weights`); only verified files give
``comparable_to_inception: true``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from p2core import clean_fid, provenance, scores
from p2core.atomic import atomic_write
from p2core.backends import (
    CLEAN_FID,
    CLEAN_FID_INCEPTION,
    DOMAIN,
    EXTRACTORS,
    INCEPTION,
    TORCH_FIDELITY,
    check_backend,
    reference_extractor,
)
from p2core.data import load_prepared
from p2core.device import pick_device
from p2core.errors import P2Error
from p2core.features import DomainFeatureExtractor, domain_logits
from p2core.progress import progress_bar
from p2core.shards import SampleShards
from p2core.weights import (
    CLEAN_FID_INCEPTION_URL,
    DEFAULT_WEIGHTS_DIR,
    INCEPTION_URL,
    WeightsFile,
    file_sha256,
    verified_file,
)

RESIZE = {
    INCEPTION: "torch-fidelity: bilinear to 299x299 as TF 1.x resized (interpolate_bilinear_2d_like_tensorflow1x)",
    DOMAIN: "bilinear with antialiasing to the classifier's resolution (none when equal)",
}


def _register_domain_extractor() -> None:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if DOMAIN not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(DOMAIN, DomainFeatureExtractor)


_register_domain_extractor()


class UInt8Images(Dataset):
    """uint8 NHWC images (array, memory map or :class:`~p2core.shards.SampleShards`) -> torch-fidelity's input:
    uint8 (C, H, W) tensors, one at a time, greyscale repeated to RGB if asked."""

    def __init__(self, images: np.ndarray, rgb: bool):
        self.images = images
        self.rgb = rgb

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1)  # a copy: memory maps are read-only
        return image.expand(3, -1, -1).contiguous() if self.rgb and image.shape[0] == 1 else image


def extractor_weights(
    extractor: str,
    domain_weights: str | Path | None = None,
    weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
    allow_unverified: bool = False,
) -> WeightsFile:
    """The extractor's weights file, verified (:mod:`p2core.weights`) before anything opens it.

    The domain network is this pipeline's own output: it is hashed and recorded, never "verified". ``extractor``
    :data:`p2core.backends.CLEAN_FID_INCEPTION` is clean-fid's TorchScript Inception.
    """
    if extractor == CLEAN_FID_INCEPTION:
        return verified_file(CLEAN_FID_INCEPTION_URL, weights_dir, allow_unverified)
    if extractor == INCEPTION:
        return verified_file(INCEPTION_URL, weights_dir, allow_unverified)
    if extractor == DOMAIN:
        if domain_weights is None or not Path(domain_weights).is_file():
            raise P2Error(f"domain feature network {domain_weights} not found; train it with `p2core train-features`")
        return WeightsFile(Path(domain_weights), file_sha256(domain_weights), verified=None)
    raise P2Error(f"unknown feature extractor {extractor!r}; choose one of {', '.join(EXTRACTORS)}")


@torch.inference_mode()
def extract_features(
    images: np.ndarray | SampleShards,
    extractor: str,
    weights: WeightsFile,
    device: str = "auto",
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """Features of uint8 NHWC ``images`` (read batch by batch, never copied whole): float32 ``(N, D)``, the layer
    torch-fidelity uses for FID (Inception: 2048-d pool; domain: 128-d)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    device = pick_device(device)
    cls = FEATURE_EXTRACTORS_REGISTRY[extractor]
    layer = cls.get_default_feature_layer_for_metric("fid")
    network = cls(extractor, [layer], feature_extractor_weights_path=str(weights.path), verbose=False)
    network = network.eval().requires_grad_(False).to(device)
    loader = DataLoader(UInt8Images(images, rgb=extractor == INCEPTION), batch_size=batch_size, num_workers=0)
    out, first = None, 0
    for batch in progress_bar(loader, desc=f"{extractor} features", disable=not progress, unit="batch"):
        features = network(batch.to(device))[0].float().cpu().numpy()
        if out is None:  # the feature width is the network's: known after its first batch
            out = np.empty((len(images), features.shape[1]), np.float32)
        out[first : first + len(features)] = features
        first += len(features)
    return out


@dataclass(frozen=True)
class Backend:
    """How one backend scores features: ``fid(mu1, sigma1, mu2, sigma2)``, ``kid(features1, features2, subset) ->
    (mean, std or None)``, and what to record about it."""

    name: str
    mode: str
    fid: Callable
    kid: Callable

    @property
    def version(self) -> str:
        return f"{self.name} {metadata.version(self.name)}"


SCORERS = {
    TORCH_FIDELITY: Backend(TORCH_FIDELITY, "n/a", scores.frechet_distance, scores.kid),
    CLEAN_FID: Backend(CLEAN_FID, clean_fid.MODE, clean_fid.fid, lambda a, b, subset: (clean_fid.kid(a, b), None)),
}


class _Extractor:
    """A backend's feature network loaded from a verified weights file: ``features(images) -> float32 (N, D)``."""

    def __init__(self, backend: str, extractor: str, weights: WeightsFile, device, progress: bool):
        try:
            check_backend(backend)
        except ValueError as error:
            raise P2Error(str(error)) from None
        self.backend, self.extractor, self.weights = backend, extractor, weights
        self.device, self.progress = pick_device(device), progress
        self.resize = clean_fid.RESIZE if backend == CLEAN_FID else RESIZE[extractor]
        if backend == CLEAN_FID:
            self.model = clean_fid.load_network(weights.path, self.device)

    def features(self, images) -> np.ndarray:
        if self.backend == CLEAN_FID:
            return clean_fid.features(images, self.model, self.device, progress=self.progress)
        return extract_features(images, self.extractor, self.weights, self.device, progress=self.progress)


def write_reference(
    data_folder: str | Path,
    out: str | Path,
    extractor: str = INCEPTION,
    domain_weights: str | Path | None = None,
    weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
    allow_unverified: bool = False,
    floor_size: int = 10_000,
    kid_subset_size: int | str | None = None,
    device: str = "auto",
    progress: bool = True,
    backend: str = TORCH_FIDELITY,
    published: tuple[str, int, str] | str | None = None,
) -> dict:
    """Reference statistics of a prepared dataset for one backend: ``features`` (N, D) float32, ``mu``, ``sigma``
    (float64) and ``info`` (JSON: backend and mode, extractor, weights file with its SHA-256 and verification, resize,
    where the statistics come from, dataset hash, the degenerate-feature check, and the noise floor of ``floor_size``
    held-out real images against the rest) in the ``.npz`` ``out``; returns ``info``.

    ``published`` (``(name, resolution, split)``, clean-fid only): use clean-fid's published statistics of that
    dataset (its KID features stand in for the features) instead of computing them from ``data_folder``, as the P2
    authors did for FFHQ. Raises :class:`P2Error` naming the extractor when its features are degenerate (nothing is
    written).
    """
    data = load_prepared(data_folder)
    if isinstance(published, str):
        published = clean_fid.parse_published(published)
    if published is not None and backend != CLEAN_FID:
        raise P2Error(f"published statistics are clean-fid's; backend {backend} computes its own")
    extractor = reference_extractor(backend, extractor)
    weights = extractor_weights(extractor, domain_weights, weights_dir, allow_unverified)
    network = _Extractor(backend, extractor, weights, device, progress)
    scorer = SCORERS[backend]
    files = []
    if published is None:
        features = network.features(data.images)
        source = f"computed from {data_folder} ({len(features)} images)"
        mu, sigma = scores.statistics(features)
    else:
        mu, sigma, features, files = clean_fid.published_statistics(*published, weights_dir, allow_unverified)
        source = "published by clean-fid: " + ", ".join(f"{f.path.name} (sha256 {f.sha256[:12]})" for f in files)
    spread = scores.check_not_degenerate(
        *scores.statistics(features) if published else (mu, sigma),
        len(features),
        f"feature extractor {extractor} ({weights.path})",
    )
    info = {
        "backend": scorer.version,
        "backend_name": backend,
        "mode": scorer.mode,
        "extractor": network.extractor,
        "extractor_weights": str(network.weights.path),
        "extractor_weights_sha256": network.weights.sha256,
        "weights_verified": network.weights.verified and all(f.verified for f in files),
        "resize": network.resize,
        "reference_statistics": source,
        "dataset": str(data_folder),
        "dataset_sha256": data.meta["sha256"],
        "n_reference": int(len(features)),
        "image_shape": list(data.images.shape[1:]),
        "feature_spread": spread,
        "noise_floor": scores.noise_floor(features, floor_size, kid_subset_size, fid=scorer.fid, kid_fn=scorer.kid),
        "recognisable": _recognisable(network.extractor, network.weights.path, features),
        "provenance": provenance.record(network.device),
    }
    blob = np.array(json.dumps(info))
    atomic_write(out, lambda handle: np.savez(handle, features=features, mu=mu, sigma=sigma, info=blob))
    return info


def read_reference(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """``(features, mu, sigma, info)`` of a :func:`write_reference` file; a missing or foreign file is one error."""
    try:
        with np.load(path) as content:
            return content["features"], content["mu"], content["sigma"], json.loads(str(content["info"]))
    except (OSError, KeyError, ValueError) as error:
        raise P2Error(
            f"{path} is not a reference statistics file ({error}); rebuild it with `p2core reference`"
        ) from None


def _score(generated, reference: str | Path, kid_subset_size, device, progress) -> tuple[dict, np.ndarray, tuple]:
    """One backend's numbers for a sample set against one reference file: ``(result, features, (mu, sigma))``."""
    ref_features, ref_mu, ref_sigma, info = read_reference(reference)
    weights = Path(info["extractor_weights"])
    digest = file_sha256(weights) if weights.is_file() else "missing"
    if digest != info["extractor_weights_sha256"]:
        raise P2Error(
            f"{weights} is missing or changed since {reference} was computed (SHA-256 {digest[:12]} vs "
            f"{info['extractor_weights_sha256'][:12]}); rebuild the reference statistics"
        )
    backend = info["backend_name"]
    if backend == TORCH_FIDELITY and list(generated.shape[1:]) != info["image_shape"]:
        raise P2Error(f"generated images are {generated.shape[1:]} but {reference} holds {info['image_shape']} images")
    network = _Extractor(
        backend, info["extractor"], WeightsFile(weights, digest, info["weights_verified"]), device, progress
    )
    scorer = SCORERS[backend]
    subset = scores.kid_subset_size(
        kid_subset_size if backend == TORCH_FIDELITY else None, len(generated), len(ref_features)
    )  # clean-fid always takes min(1000, smaller set)
    features = network.features(generated)
    kid_mean, kid_std = scorer.kid(features, ref_features, subset)
    result = {
        "fid": scorer.fid(*scores.statistics(features), ref_mu, ref_sigma),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        **scores.precision_recall(features, ref_features),
        "recognisable": _recognisable(info["extractor"], weights, features),
        "reference_recognisable": info.get("recognisable"),
        **{k: info[k] for k in ("backend", "mode", "extractor", "extractor_weights", "extractor_weights_sha256")},
        "backend_name": backend,
        "weights_verified": info["weights_verified"],
        "comparable_to_inception": info["extractor"] != DOMAIN and bool(info["weights_verified"]),
        "resize": info["resize"],
        "reference": str(reference),
        "reference_statistics": info["reference_statistics"],
        "n_generated": int(len(generated)),
        "n_reference": int(len(ref_features)),
        "kid_subset_size": int(subset),
        "kid_subsets": scores.KID_SUBSETS,
        "noise_floor": info["noise_floor"],
        "dataset_sha256": info["dataset_sha256"],
    }
    return result, features, (ref_mu, ref_sigma)


def _recognisable(extractor: str, weights: Path, features: np.ndarray) -> float | None:
    """The fraction of images the domain classifier recognises (:func:`p2core.scores.recognisable_fraction`), from
    their domain features; None for other extractors (no classifier of the domain)."""
    if extractor != DOMAIN:
        return None
    return scores.recognisable_fraction(domain_logits(weights, features))


def parse_tags(pairs: list[str]) -> dict:
    """``["seed=0", "objective=p2"]`` -> ``{"seed": 0, "objective": "p2"}`` (integers parsed): what a metrics JSON
    records about the sample set it scores (read back by the tables)."""
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise P2Error(f"tag {pair!r} is not KEY=VALUE")
        tags[key] = int(value) if value.lstrip("-").isdigit() else value
    return tags


def evaluate_samples(
    shard_paths: list[str | Path],
    references: list[str | Path] | str | Path,
    out: str | Path,
    kid_subset_size: int | str | None = None,
    bootstrap: int = 100,
    device: str = "auto",
    tags: dict | None = None,
    progress: bool = True,
) -> dict:
    """FID/KID of a sample set (its shard files) against one or more reference statistics files
    (:func:`write_reference`, one per backend); writes the metrics JSON to ``out`` and returns it.

    ``backends`` holds every backend's numbers; the first reference's are also at the top level (``fid``,
    ``kid_mean``, ...: what the tables use). Each reference's extractor weights file is hashed again and must be
    unchanged. ``kid_subset_size`` None means ``min(1000, smaller set)`` (clean-fid always uses its own rule, the
    same). ``bootstrap`` resamples of the generated set (first backend) give ``fid_bootstrap`` (every resample's FID,
    for intervals of differences) and its 2.5/97.5 percentiles; 0 skips it.
    """
    references = [references] if isinstance(references, (str, Path)) else list(references)
    generated = SampleShards(shard_paths)
    scored = [_score(generated, reference, kid_subset_size, device, progress) for reference in references]
    results = [result for result, _, _ in scored]
    interval = {"bootstrap_resamples": int(bootstrap)}
    if bootstrap:
        _, features, (ref_mu, ref_sigma) = scored[0]
        replicates = scores.bootstrap_fid(features, scores.FixedReference(ref_mu, ref_sigma), bootstrap)
        interval.update(
            fid_bootstrap_low95=float(np.percentile(replicates, 2.5)),
            fid_bootstrap_high95=float(np.percentile(replicates, 97.5)),
            fid_bootstrap=[round(float(v), 6) for v in replicates],
        )
    result = {
        **results[0],
        **interval,
        "backends": results,
        "samples": [str(p) for p in shard_paths],
        "precision": generated.precision,
        "tags": tags or {},
        "provenance": provenance.record(pick_device(device)),
    }
    write_json(out, result)
    return result


def write_json(path: str | Path, content: dict) -> None:
    """Write a JSON file atomically."""
    atomic_write(path, lambda handle: handle.write((json.dumps(content, indent=2) + "\n").encode()))
