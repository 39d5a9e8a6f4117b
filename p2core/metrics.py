"""FID and KID through torch-fidelity, LPIPS through the ``lpips`` package, and the offline weight story.

Feature extractors (``extractor`` argument):

* ``inception-v3-compat``: the standard (TF-Inception port). Its weights file must be present locally: in
  ``weights_dir`` (put there by ``p2core prefetch``) or in the torch hub cache. Nothing downloads at evaluation
  time, so offline compute nodes work and a missing file is one clear error.
* ``domain``: :class:`p2core.features.DomainFeatureExtractor`, a classifier trained on the dataset's labels
  (embedded data). Its numbers are **not comparable to Inception FID**; the metrics JSON says so.

Reference features are cached per (dataset content hash, extractor, weights hash) in ``cache_dir``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from p2core import provenance
from p2core.atomic import atomic_write
from p2core.data import load_prepared
from p2core.errors import P2Error
from p2core.features import DomainFeatureExtractor, file_sha256
from p2core.shards import SampleShards

INCEPTION = "inception-v3-compat"
DOMAIN = "domain"
EXTRACTORS = (INCEPTION, DOMAIN)
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
DEFAULT_WEIGHTS_DIR = Path("resources/weights")


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
        image = torch.from_numpy(np.ascontiguousarray(self.images[index])).permute(2, 0, 1)
        return image.expand(3, -1, -1).contiguous() if self.rgb and image.shape[0] == 1 else image


def weight_file(url: str, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> Path:
    """Local path of a downloadable weights file: ``weights_dir`` first, then the torch hub cache.

    Raises :class:`P2Error` naming the file, its URL and where to put it when neither has it.
    """
    name = url.rsplit("/", 1)[-1]
    candidates = [Path(weights_dir) / name, Path(torch.hub.get_dir()) / "checkpoints" / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise P2Error(
        f"weights file {name} not found; download {url} into {Path(weights_dir).resolve()}/ "
        f"(or run `p2core prefetch` on a machine with internet)"
    )


def prefetch(weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> list[Path]:
    """Download the Inception and AlexNet (LPIPS) weights into ``weights_dir``; returns their paths."""
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for url in (INCEPTION_URL, ALEXNET_URL):
        target = weights_dir / url.rsplit("/", 1)[-1]
        if not target.is_file():
            tmp = target.with_name(target.name + ".part")
            torch.hub.download_url_to_file(url, str(tmp), progress=True)
            os.replace(tmp, target)
        paths.append(target)
    return paths


def resolve_extractor_weights(extractor: str, domain_weights: str | Path | None, weights_dir) -> Path:
    if extractor == INCEPTION:
        return weight_file(INCEPTION_URL, weights_dir)
    if extractor == DOMAIN:
        if domain_weights is None or not Path(domain_weights).is_file():
            raise P2Error(f"domain feature network {domain_weights} not found; train it with `p2core train-features`")
        return Path(domain_weights)
    raise P2Error(f"unknown feature extractor {extractor!r}; choose one of {', '.join(EXTRACTORS)}")


def check_kid_subset(kid_subset_size: int, n_generated: int, n_reference: int) -> None:
    """KID draws subsets of ``kid_subset_size`` from both sets: it must not exceed either count."""
    if kid_subset_size < 2:
        raise P2Error(f"kid_subset_size must be >= 2, got {kid_subset_size}")
    smaller = min(n_generated, n_reference)
    if kid_subset_size > smaller:
        raise P2Error(
            f"kid_subset_size {kid_subset_size} exceeds the {smaller} images available "
            f"({n_generated} generated, {n_reference} reference); lower it or draw more samples"
        )


def fid_kid(
    generated: np.ndarray | SampleShards,
    reference: np.ndarray,
    extractor: str = INCEPTION,
    reference_name: str = "reference",
    domain_weights: str | Path | None = None,
    weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    cache_dir: str | Path | None = None,
    device: str = "auto",
) -> dict:
    """FID and KID of uint8 NHWC ``generated`` images against ``reference`` images.

    Both are read image by image (an array, a memory map, or the shards of a sample set), never copied whole.

    Returns a JSON-ready dict: ``fid``, ``kid_mean``, ``kid_std``, ``extractor``, ``extractor_weights``,
    ``extractor_weights_sha256``, ``n_generated``, ``n_reference``, ``kid_subset_size``, ``comparable_to_inception``.
    With ``cache_dir`` the reference features are cached under ``reference_name`` + extractor + weights hash.
    """
    import torch_fidelity

    check_kid_subset(kid_subset_size, len(generated), len(reference))
    if generated.shape[1:] != reference.shape[1:]:
        raise P2Error(f"generated images are {generated.shape[1:]} but reference images {reference.shape[1:]}")
    weights = resolve_extractor_weights(extractor, domain_weights, weights_dir)
    weights_hash = file_sha256(weights)
    cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    rgb = extractor == INCEPTION
    options = dict(
        input1=UInt8Images(generated, rgb),
        input2=UInt8Images(reference, rgb),
        cuda=cuda,
        fid=True,
        kid=True,
        feature_extractor=extractor,
        feature_extractor_weights_path=str(weights),
        kid_subset_size=kid_subset_size,
        kid_subsets=kid_subsets,
        verbose=False,
        batch_size=64,
        save_cpu_ram=True,
    )
    if cache_dir is not None:
        options.update(cache=True, cache_root=str(cache_dir), input2_cache_name=f"{reference_name}-{weights_hash[:12]}")
    else:
        options.update(cache=False)
    result = torch_fidelity.calculate_metrics(**options)
    return {
        "fid": float(result["frechet_inception_distance"]),
        "kid_mean": float(result["kernel_inception_distance_mean"]),
        "kid_std": float(result["kernel_inception_distance_std"]),
        "extractor": extractor,
        "extractor_weights": str(weights),
        "extractor_weights_sha256": weights_hash,
        "n_generated": int(len(generated)),
        "n_reference": int(len(reference)),
        "kid_subset_size": int(kid_subset_size),
        "comparable_to_inception": extractor == INCEPTION,
    }


def lpips_model(weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, net: str = "alex"):
    """``lpips.LPIPS`` (AlexNet) with its backbone loaded from a local file; no download at run time.

    The learned linear layers ship inside the ``lpips`` package; the AlexNet backbone comes from ``weights_dir``
    or the torch hub cache (:func:`weight_file`).
    """
    import lpips
    import torchvision

    if net != "alex":
        raise P2Error(f"only the AlexNet LPIPS backbone is supported offline, got {net!r}")
    backbone_path = weight_file(ALEXNET_URL, weights_dir)
    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    alexnet = torchvision.models.alexnet()
    alexnet.load_state_dict(torch.load(backbone_path, map_location="cpu", weights_only=True))
    features = alexnet.features
    for slice_ in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
        for name, layer in slice_.named_children():
            layer.load_state_dict(features[int(name)].state_dict())
    return model.eval().requires_grad_(False)


def write_json(path: str | Path, content: dict) -> None:
    """Write a JSON file atomically."""
    atomic_write(path, lambda handle: handle.write((json.dumps(content, indent=2) + "\n").encode()))


def evaluate_samples(
    shard_paths: list[str | Path],
    data_folder: str | Path,
    out: str | Path,
    extractor: str = INCEPTION,
    domain_weights: str | Path | None = None,
    weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
    kid_subset_size: int = 1000,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    tags: dict | None = None,
) -> dict:
    """FID/KID (:func:`fid_kid`) of a sample set, read from its shard files, against a prepared dataset; writes the
    metrics JSON to ``out`` with the shard list, the dataset hash and ``tags`` (what the tables group by)."""
    data = load_prepared(data_folder)
    reference_name = f"{data.meta.get('name', 'data')}-{data.meta['sha256'][:12]}"
    result = fid_kid(
        SampleShards(shard_paths),
        data.images,
        extractor,
        reference_name=reference_name,
        domain_weights=domain_weights,
        weights_dir=weights_dir,
        kid_subset_size=kid_subset_size,
        cache_dir=cache_dir,
        device=device,
    )
    used = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    result.update(
        samples=[str(p) for p in shard_paths],
        dataset_sha256=data.meta["sha256"],
        tags=tags or {},
        provenance=provenance.record(used),
    )
    write_json(out, result)
    return result
