"""The names of the FID/KID backends, their feature extractors and Figure 1's perceptual distances, written once
(torch-free: the workflow, the command line, :mod:`p2core.metrics` and :mod:`p2core.distances` read them here)."""

from __future__ import annotations

TORCH_FIDELITY = "torch-fidelity"
CLEAN_FID = "clean-fid"
BACKENDS = (TORCH_FIDELITY, CLEAN_FID)

INCEPTION = "inception-v3-compat"  # torch-fidelity's Inception port
DOMAIN = "domain"  # the digit classifier trained on a labelled embedded dataset
CLEAN_FID_INCEPTION = "inception-torchscript"  # clean-fid's own network, its only extractor
EXTRACTORS = (INCEPTION, DOMAIN)  # what torch-fidelity can use; clean-fid always uses CLEAN_FID_INCEPTION
DISTANCES = ("lpips", DOMAIN)  # Figure 1: AlexNet LPIPS, or the domain classifier's feature distance


def check_backend(name: str) -> str:
    """``name`` if it is a backend, else ``ValueError`` naming the choices."""
    if name not in BACKENDS:
        raise ValueError(f"unknown metrics backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def reference_extractor(backend: str, extractor: str) -> str:
    """The extractor a backend uses for a dataset configured with ``extractor`` (clean-fid: always its own)."""
    return CLEAN_FID_INCEPTION if check_backend(backend) == CLEAN_FID else extractor


def column_prefix(backend: str) -> str:
    """A backend's column prefix in the tables: ``clean-fid`` -> ``clean_fid``."""
    return check_backend(backend).replace("-", "_")
