"""Perceptual distances between images (Figure 1): AlexNet LPIPS from verified local weights, and the domain
classifier's feature distance for data LPIPS cannot judge (the embedded digits). Nothing here scores FID."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from p2core.backends import DISTANCES
from p2core.errors import P2Error
from p2core.features import DomainClassifier, load_domain_classifier
from p2core.weights import ALEXNET_URL, DEFAULT_WEIGHTS_DIR, verified_file

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def perceptual_distance(
    kind: str, weights_dir: str | Path, domain_weights: str | Path | None = None, allow_unverified: bool = False
) -> tuple[Distance, str]:
    """Figure 1's distance and its label: ``lpips`` (AlexNet LPIPS, greyscale repeated to RGB) or ``domain`` (the
    domain classifier's normalised feature distance, for data LPIPS cannot judge)."""
    if kind == "lpips":
        model, verified = lpips_model(weights_dir, allow_unverified=allow_unverified)

        def distance(a, b):
            if a.shape[1] == 1:
                a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
            return model(a, b).flatten()

        return distance, "LPIPS (AlexNet)" if verified else "LPIPS (AlexNet, UNVERIFIED backbone file)"
    if kind == "domain":
        classifier, _ = load_domain_classifier(domain_weights)
        return (lambda a, b: domain_distance(classifier, a, b)), "domain-feature distance (not LPIPS)"
    raise P2Error(f"unknown distance {kind!r}; choose one of {', '.join(DISTANCES)}")


def lpips_model(weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, net: str = "alex", allow_unverified: bool = False):
    """``(lpips.LPIPS, verified)``: AlexNet LPIPS with its backbone loaded from a local file checked by
    :mod:`p2core.weights` (``verified`` False only with ``allow_unverified``); no download at run time.

    The learned linear layers ship inside the ``lpips`` package; the AlexNet backbone comes from ``weights_dir``
    or the torch hub cache (:mod:`p2core.weights`).
    """
    import lpips
    import torchvision

    if net != "alex":
        raise P2Error(f"only the AlexNet LPIPS backbone is supported offline, got {net!r}")
    backbone = verified_file(ALEXNET_URL, weights_dir, allow_unverified)
    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    alexnet = torchvision.models.alexnet()
    alexnet.load_state_dict(torch.load(backbone.path, map_location="cpu", weights_only=True))
    features = alexnet.features
    for slice_ in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
        for name, layer in slice_.named_children():
            layer.load_state_dict(features[int(name)].state_dict())
    return model.eval().requires_grad_(False), backbone.verified


@torch.no_grad()
def domain_distance(classifier: DomainClassifier, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS-style distance with the classifier's stages: unit-normalise channels, mean squared difference per
    stage, averaged over stages (no learned per-channel weights). ``a``, ``b`` float (B, C, H, W) in [-1, 1]; (B,)."""
    total = 0.0
    stages_a, stages_b = classifier.stages(a), classifier.stages(b)
    for fa, fb in zip(stages_a, stages_b, strict=True):
        fa = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
        fb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
        total = total + (fa - fb).square().sum(dim=1).mean(dim=(1, 2))
    return total / len(stages_a)
