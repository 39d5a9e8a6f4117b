import json

import numpy as np
import pytest
import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from p2core.data import digits
from p2core.errors import P2Error
from p2core.features import DomainFeatureExtractor, domain_distance, load_domain_classifier, train_domain_classifier
from p2core.metrics import check_kid_subset, fid_kid, lpips_model, weight_file


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    images, labels = digits(8)
    path = tmp_path_factory.mktemp("features") / "domain.pt"
    result = train_domain_classifier(images, labels, path, epochs=4, progress=False)
    return images, path, result


def noisy(images, sigma, seed=0):
    noise = np.random.default_rng(seed).normal(0, sigma, images.shape)
    return np.clip(images.astype(float) + noise, 0, 255).astype(np.uint8)


def test_domain_classifier_learns_digits(domain):
    _, path, result = domain
    assert result["heldout_accuracy"] > 0.9  # 4 epochs at 8 px here; the pipeline trains longer at 16 px
    _, state = load_domain_classifier(path)
    assert state["heldout_accuracy"] == result["heldout_accuracy"]


def test_extractor_is_registered_with_torch_fidelity():
    assert FEATURE_EXTRACTORS_REGISTRY["domain"] is DomainFeatureExtractor


def test_fid_self_is_zero_and_grows_with_noise(domain, tmp_path):
    images, path, _ = domain
    half = images[:800]
    results = [
        fid_kid(
            noisy(half, s) if s else half, half, "domain", domain_weights=path, kid_subset_size=200, cache_dir=tmp_path
        )
        for s in (0, 20, 40, 80)
    ]
    fids = [r["fid"] for r in results]
    assert abs(fids[0]) < 1e-6 and abs(results[0]["kid_mean"]) < results[0]["kid_std"]  # KID is unbiased, not 0
    assert fids == sorted(fids) and fids[-1] > 2 * fids[1]
    kids = [r["kid_mean"] for r in results]
    assert kids[-1] > kids[1]
    assert any(p.name.startswith("reference") for p in tmp_path.iterdir())  # reference features cached


def test_metrics_record_their_provenance(domain):
    images, path, _ = domain
    result = fid_kid(images[:300], images[300:700], "domain", domain_weights=path, kid_subset_size=100)
    assert set(result) >= {
        "fid",
        "kid_mean",
        "kid_std",
        "extractor",
        "extractor_weights_sha256",
        "n_generated",
        "n_reference",
        "kid_subset_size",
        "comparable_to_inception",
    }
    assert result["n_generated"] == 300 and result["n_reference"] == 400 and not result["comparable_to_inception"]
    json.dumps(result)


def test_kid_subset_validated_before_anything_runs():
    check_kid_subset(100, 100, 5000)
    with pytest.raises(P2Error, match="kid_subset_size 1000 exceeds the 500 images"):
        check_kid_subset(1000, 500, 5000)
    with pytest.raises(P2Error, match="kid_subset_size"):
        fid_kid(np.zeros((10, 8, 8, 1), np.uint8), np.zeros((10, 8, 8, 1), np.uint8), "domain", kid_subset_size=50)


def test_missing_offline_weights_name_file_url_and_place(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(P2Error, match=r"weights-inception-2015-12-05-6726825d.pth not found; download https://.*into"):
        fid_kid(
            np.zeros((10, 8, 8, 3), np.uint8),
            np.zeros((10, 8, 8, 3), np.uint8),
            kid_subset_size=5,
            weights_dir=tmp_path,
        )
    with pytest.raises(P2Error, match="alexnet-owt-7be5be79.pth not found"):
        lpips_model(tmp_path)
    (tmp_path / "alexnet-owt-7be5be79.pth").write_bytes(b"x")
    assert weight_file("https://host/alexnet-owt-7be5be79.pth", tmp_path) == tmp_path / "alexnet-owt-7be5be79.pth"


def test_lpips_with_a_local_backbone_file(tmp_path, monkeypatch):
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alexnet-owt-7be5be79.pth")  # random weights
    model = lpips_model(tmp_path)
    first = model.net.slice1[0].weight
    assert torch.equal(first, torch.load(tmp_path / "alexnet-owt-7be5be79.pth")["features.0.weight"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert model(x, x).abs().max() < 1e-6 and (model(x, x.flip(0)) > 0).all()


def test_domain_distance_is_zero_for_identical_and_larger_for_noisier(domain):
    images, path, _ = domain
    classifier, _ = load_domain_classifier(path)
    x = torch.from_numpy(images[:16]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert domain_distance(classifier, x, x).abs().max() < 1e-6
    small = domain_distance(classifier, x, (x + 0.1 * torch.randn_like(x)).clamp(-1, 1)).mean()
    large = domain_distance(classifier, x, (x + 0.8 * torch.randn_like(x)).clamp(-1, 1)).mean()
    assert 0 < small < large
