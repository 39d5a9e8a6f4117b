import dataclasses
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from p2core import clean_fid, metrics, scores
from p2core.checkpoint import save_checkpoint
from p2core.cli import main
from p2core.data import array_sha256, load_prepared
from p2core.distances import domain_distance, lpips_model
from p2core.errors import P2Error
from p2core.features import (
    DomainClassifier,
    DomainFeatureExtractor,
    load_domain_classifier,
    train_domain_classifier,
)
from p2core.metrics import evaluate_samples, write_reference
from p2core.prepare import digits
from p2core.shards import save_shard
from p2core.weights import LOCK_FILE, clean_fid_statistics_urls, file_name, file_sha256, locate, prefetch, verify


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    images, labels = digits(8)
    path = tmp_path_factory.mktemp("features") / "domain.pt"
    result = train_domain_classifier(images, labels, path, epochs=12, progress=False)
    return images, path, result


@pytest.fixture(scope="module")
def reference(domain, digits8, tmp_path_factory):
    """Domain-feature reference statistics of the 8 px digits, noise floor at 300 held-out images."""
    _, path, _ = domain
    out = tmp_path_factory.mktemp("reference") / "domain.npz"
    info = write_reference(digits8, out, "domain", domain_weights=path, floor_size=300, progress=False)
    return out, info


def noisy(images, sigma, seed=0):
    noise = np.random.default_rng(seed).normal(0, sigma, images.shape)
    return np.clip(images.astype(float) + noise, 0, 255).astype(np.uint8)


def prepared_subset(source, folder, count):
    """A prepared dataset of the first ``count`` images of ``source``."""
    folder.mkdir()
    images = np.array(load_prepared(source).images[:count])
    np.save(folder / "images.npy", images)
    meta = {"name": f"subset{count}", "count": count, "sha256": array_sha256(images), "labelled": False}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def evaluate_images(images, reference_path, folder, name, **options):
    """Evaluate uint8 images (written as two shards) against a reference file; the metrics dict."""
    half = len(images) // 2
    shards = [folder / f"{name}0.npz", folder / f"{name}1.npz"]
    save_shard(shards[0], images[:half], 0)
    save_shard(shards[1], images[half:], half)
    return evaluate_samples(shards, reference_path, folder / f"{name}.json", progress=False, **options)


def test_domain_classifier_learns_digits(domain):
    _, path, result = domain
    assert result["heldout_accuracy"] > 0.9  # 12 epochs at 8 px here; the pipeline trains at 16 px
    _, state = load_domain_classifier(path)
    assert state["heldout_accuracy"] == result["heldout_accuracy"]


def test_extractor_is_registered_with_torch_fidelity():
    assert FEATURE_EXTRACTORS_REGISTRY["domain"] is DomainFeatureExtractor


def test_fid_self_is_zero_and_grows_with_noise(domain, reference, tmp_path):
    images = domain[0]
    results = [
        evaluate_images(noisy(images, s) if s else images.copy(), reference[0], tmp_path, f"n{s}", bootstrap=0)
        for s in (0, 20, 40, 80)
    ]
    fids = [r["fid"] for r in results]
    assert abs(fids[0]) < 1e-6
    kids = [r["kid_mean"] for r in results]
    assert abs(kids[0]) < kids[-1] / 10  # not exactly 0: KID's subsets of one set overlap
    assert fids == sorted(fids) and fids[-1] > 2 * fids[1]
    assert kids[-1] > kids[1]


def test_numbers_equal_torch_fidelity_on_the_same_features(domain, reference, tmp_path):
    import torch_fidelity

    from p2core.metrics import UInt8Images

    images, path, _ = domain
    generated = noisy(images[:300], 30)
    ours = evaluate_images(generated, reference[0], tmp_path, "g", kid_subset_size=100, bootstrap=0)
    theirs = torch_fidelity.calculate_metrics(
        input1=UInt8Images(generated, rgb=False),
        input2=UInt8Images(images, rgb=False),
        cuda=False,
        fid=True,
        kid=True,
        feature_extractor="domain",
        feature_extractor_weights_path=str(path),
        kid_subset_size=100,
        verbose=False,
        cache=False,
    )
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)
    assert ours["kid_mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4, abs=1e-7)


def test_metrics_json_says_how_every_number_was_computed(domain, reference, tmp_path):
    images = domain[0]
    result = evaluate_images(noisy(images[:300], 30), reference[0], tmp_path, "g", bootstrap=20)
    content = json.loads((tmp_path / "g.json").read_text())
    assert content == json.loads(json.dumps(result))
    assert {"fid", "kid_mean", "kid_std", "backend", "extractor", "extractor_weights_sha256", "resize"} <= set(content)
    assert content["backend"].startswith("torch-fidelity ") and content["extractor"] == "domain"
    assert content["weights_verified"] is None and content["comparable_to_inception"] is False
    assert content["n_generated"] == 300 and content["n_reference"] == 1797
    assert content["kid_subset_size"] == 300  # auto: min(1000, smaller set)
    floor = content["noise_floor"]
    assert floor["n_held_out"] == 300 and floor["n_rest"] == 1497 and 0 < floor["fid"] < content["fid"]
    assert len(content["fid_bootstrap"]) == 20 and content["fid_bootstrap_low95"] < content["fid_bootstrap_high95"]
    assert content["provenance"]["step"] and content["dataset_sha256"] == reference[1]["dataset_sha256"]


def test_quality_beside_fid_sees_noise_images(domain, reference, tmp_path):
    """300 real digits score near the ceilings (the reference's recognisable fraction, the noise floor's precision);
    replacing 30% of them with noise images lowers the recognisable fraction and precision by at least half that
    (measured: by 0.17 and 0.20; the classifier is confident on about 4 in 10 noise images, as classifiers are out
    of their domain), while recall, the coverage of the real digits, does not fall."""
    images = domain[0]
    real = images[np.random.default_rng(1).permutation(len(images))[:300]]
    noise = np.random.default_rng(2).integers(0, 256, (90, *images.shape[1:]), dtype=np.uint8)
    clean = evaluate_images(real, reference[0], tmp_path, "real", bootstrap=0)
    spoiled = evaluate_images(np.concatenate([real[:210], noise]), reference[0], tmp_path, "mixed", bootstrap=0)
    ceiling, floor = reference[1]["recognisable"], reference[1]["noise_floor"]
    assert ceiling > 0.9 and clean["reference_recognisable"] == ceiling
    assert abs(clean["recognisable"] - ceiling) < 0.05
    # (these 300 are reference images themselves: at the noise floor's precision of held-out ones, or above)
    assert clean["prc_precision"] > floor["prc_precision"] - 0.05 and clean["prc_precision"] > 0.8
    assert clean["recognisable"] - spoiled["recognisable"] > 0.15
    assert clean["prc_precision"] - spoiled["prc_precision"] > 0.15
    assert spoiled["prc_recall"] > clean["prc_recall"] - 0.05


def test_fixed_reference_fid_equals_the_closed_form(rng):
    a, b = rng.normal(size=(400, 16)), rng.normal(0.3, 1.5, size=(300, 16)) @ rng.normal(size=(16, 16))
    mu_a, sigma_a = scores.statistics(a)
    expected = scores.frechet_distance(*scores.statistics(b), mu_a, sigma_a)
    assert scores.FixedReference(mu_a, sigma_a).fid(b) == pytest.approx(expected, rel=1e-8)
    # FID of two Gaussians with equal covariance is the squared distance of the means
    assert scores.frechet_distance(np.ones(3), np.eye(3), np.zeros(3), np.eye(3)) == pytest.approx(3.0)


def test_bootstrap_spread_shrinks_with_more_samples(rng):
    reference = scores.FixedReference(np.zeros(8), np.eye(8))
    widths = []
    for n in (100, 1600):
        replicates = scores.bootstrap_fid(rng.normal(size=(n, 8)), reference, 50)
        widths.append(np.percentile(replicates, 97.5) - np.percentile(replicates, 2.5))
    assert widths[1] < widths[0] / 2  # about 1/sqrt(16)


def test_degenerate_features_stop_the_evaluation(digits8, tmp_path):
    classifier = DomainClassifier(1, 8, 10)
    for parameter in classifier.parameters():
        torch.nn.init.zeros_(parameter)  # every image gives the same (zero) features
    dead = tmp_path / "dead.pt"
    save_checkpoint(
        dead,
        "domain-classifier",
        state_dict=classifier.state_dict(),
        config=dict(in_channels=1, resolution=8, num_classes=10),
        heldout_accuracy=0.1,
        heldout_count=1,
    )
    with pytest.raises(P2Error, match="feature extractor domain .*near-constant features"):
        write_reference(digits8, tmp_path / "ref.npz", "domain", domain_weights=dead, progress=False)
    assert not (tmp_path / "ref.npz").exists()
    varied = np.random.default_rng(0).normal(size=(50, 4))
    assert scores.check_not_degenerate(*scores.statistics(varied), 50, "x")["total_variance"] > 1


def test_kid_subset_defaults_to_the_smaller_set_up_to_1000():
    assert scores.kid_subset_size(None, 300, 1797) == 300
    assert scores.kid_subset_size(None, 10_000, 1336) == 1000
    assert scores.kid_subset_size(100, 100, 5000) == 100
    with pytest.raises(P2Error, match="kid_subset_size 1000 exceeds the 500 images"):
        scores.kid_subset_size(1000, 500, 5000)


# ------------------------------------------------------------------------------------------------ weight files
def test_missing_offline_weights_name_file_url_and_place(tmp_path, monkeypatch, digits8):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(P2Error, match=r"weights-inception-2015-12-05-6726825d.pth not found; download https://.*into"):
        write_reference(digits8, tmp_path / "ref.npz", weights_dir=tmp_path, progress=False)
    with pytest.raises(P2Error, match="alexnet-owt-7be5be79.pth not found"):
        lpips_model(tmp_path)


class _Trap:
    """Unpickling this writes a marker file: it shows whether a file was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_tampered_weights_file_is_refused_before_it_is_unpickled(tmp_path, monkeypatch, digits8):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    marker = tmp_path / "unpickled"
    with open(tmp_path / "weights-inception-2015-12-05-6726825d.pth", "wb") as handle:
        pickle.dump(_Trap(str(marker)), handle)
    with pytest.raises(P2Error, match="is not the official file: SHA-256 .* does not match the expected 6726825d"):
        write_reference(digits8, tmp_path / "ref.npz", weights_dir=tmp_path, progress=False)
    assert not marker.exists()
    assert main(["reference", "--data", str(digits8), "--weights-dir", str(tmp_path), "--out", "x.npz"]) == 2


def test_weights_verified_by_name_prefix_or_lock_file(tmp_path, monkeypatch):
    payload = tmp_path / "payload"
    payload.write_bytes(b"official bytes")
    digest = file_sha256(payload)
    named = tmp_path / f"net-{digest[:8]}.pth"
    named.write_bytes(b"official bytes")
    assert verify(named, tmp_path).verified
    plain = tmp_path / "plain.pt"
    plain.write_bytes(b"official bytes")
    with pytest.raises(P2Error, match="cannot verify .*plain.pt: no published hash"):
        verify(plain, tmp_path)
    assert verify(plain, tmp_path, allow_unverified=True).verified is False
    (tmp_path / LOCK_FILE).write_text(json.dumps({"plain.pt": digest}))
    assert verify(plain, tmp_path).verified

    # prefetch: checks downloads against the name's hash and records the digest of files without one
    def fake_download(url, dst, progress=True):
        if "good" in url:
            payload.replace(dst)
        else:
            open(dst, "wb").write(b"corrupt")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    store = tmp_path / "store"
    payload.write_bytes(b"official bytes")
    prefetch(store, (f"https://host/good-{digest[:8]}.pth",))
    with pytest.raises(P2Error, match="download of https://host/bad-.*expected"):
        prefetch(store, (f"https://host/bad-{digest[:8]}.pth",))
    assert sorted(p.name for p in store.iterdir()) == [f"good-{digest[:8]}.pth"]
    payload.write_bytes(b"official bytes")
    prefetch(store, ("https://host/good-unhashed.pt",))
    assert json.loads((store / LOCK_FILE).read_text()) == {"good-unhashed.pt": digest}
    assert locate("https://host/good-unhashed.pt", store) == store / "good-unhashed.pt"


def test_lpips_with_a_local_backbone_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alexnet-owt-7be5be79.pth")  # random weights
    with pytest.raises(P2Error, match="not the official file"):
        lpips_model(tmp_path)
    model, verified = lpips_model(tmp_path, allow_unverified=True)
    assert verified is False
    first = model.net.slice1[0].weight
    assert torch.equal(first, torch.load(tmp_path / "alexnet-owt-7be5be79.pth")["features.0.weight"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert model(x, x).abs().max() < 1e-6 and (model(x, x.flip(0)) > 0).all()


# ------------------------------------------------------------------------------- Inception, end to end (stand-in)
def test_inception_path_end_to_end_with_a_stand_in(inception_standin, digits8, tmp_path):
    """The real Inception architecture with random (He-scaled) weights: FID of a set against itself ~0 and growing with
    noise, through the command line; results say the weights are unverified and not comparable."""
    subset = prepared_subset(digits8, tmp_path / "data", 32)
    images = np.array(load_prepared(subset).images)
    ref = tmp_path / "ref.npz"
    args = ["reference", "--data", str(subset), "--weights-dir", str(inception_standin), "--floor-size", "12"]
    assert main([*args, "--out", str(ref)]) == 2  # a stand-in is not the official file
    assert main([*args, "--allow-unverified-weights", "--no-progress", "--out", str(ref)]) == 0
    results = []
    for sigma in (0, 90):
        shard = tmp_path / f"s{sigma}.npz"
        save_shard(shard, noisy(images[:12], sigma, seed=1) if sigma else images[:12].copy(), 0)
        out = tmp_path / f"m{sigma}.json"
        command = ["evaluate", "--samples", str(shard), "--reference", str(ref), "--out", str(out)]
        assert main([*command, "--bootstrap", "2" if sigma == 0 else "0", "--no-progress"]) == 0
        results.append(json.loads(out.read_text()))
    fids = [r["fid"] for r in results]
    assert fids[0] < fids[1] and results[1]["kid_mean"] > results[0]["kid_mean"]
    assert all(r["weights_verified"] is False and r["comparable_to_inception"] is False for r in results)
    assert results[0]["extractor"] == "inception-v3-compat" and results[0]["kid_subset_size"] == 12
    assert results[0]["noise_floor"]["fid"] > 0 and len(results[0]["fid_bootstrap"]) == 2


def test_domain_distance_is_zero_for_identical_and_larger_for_noisier(domain):
    images, path, _ = domain
    classifier, _ = load_domain_classifier(path)
    x = torch.from_numpy(images[:16]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert domain_distance(classifier, x, x).abs().max() < 1e-6
    small = domain_distance(classifier, x, (x + 0.1 * torch.randn_like(x)).clamp(-1, 1)).mean()
    large = domain_distance(classifier, x, (x + 0.8 * torch.randn_like(x)).clamp(-1, 1)).mean()
    assert 0 < small < large


# ------------------------------------------------------------------------------------- clean-fid (stand-in network)
def test_clean_fid_features_equal_clean_fids_own_pipeline(clean_fid_standin, digits8, tmp_path):
    """Our clean-mode features of in-memory images equal clean-fid's own folder pipeline (PNG files, its resizer,
    its dataset class) on the same network: the numbers are computed as the authors computed theirs."""
    from cleanfid.fid import get_folder_features
    from PIL import Image

    model, weights = clean_fid.network(clean_fid_standin, allow_unverified=True)
    assert weights.verified is False
    images = np.repeat(np.array(load_prepared(digits8).images[:10]), 3, axis=-1)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i:02d}.png")
    theirs = get_folder_features(str(tmp_path), model, num_workers=0, batch_size=4, device="cpu", verbose=False)
    ours = clean_fid.features(images, model, progress=False)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert ours.std(axis=0).mean() > 0  # the stand-in's features vary


@pytest.fixture
def fast_clean_fid(monkeypatch):
    """clean-fid's scipy ``sqrtm`` takes 20-40 s per 2048-d FID on a 2-core CPU: tests with 2048-d stand-in features
    get the same quantity from the symmetric form (:class:`p2core.scores.FixedReference`; the formulas agree, see
    ``test_clean_fid_formulas_are_the_closed_forms``). Returns the patched scorer."""
    fast = dataclasses.replace(
        metrics.SCORERS["clean-fid"], fid=lambda m1, s1, m2, s2: scores.FixedReference(m2, s2).fid_of(m1, s1)
    )
    monkeypatch.setitem(metrics.SCORERS, "clean-fid", fast)
    return fast


def test_clean_fid_formulas_are_the_closed_forms(rng):
    a, b = rng.normal(size=(200, 6)), rng.normal(0.5, 2.0, size=(150, 6))
    stats_a, stats_b = scores.statistics(a), scores.statistics(b)
    assert clean_fid.fid(*stats_a, *stats_b) == pytest.approx(scores.frechet_distance(*stats_a, *stats_b), rel=1e-6)
    assert abs(clean_fid.kid(a, a[::-1].copy())) < 0.1 * clean_fid.kid(a, b)


def test_clean_fid_against_published_statistics_beside_torch_fidelity(
    clean_fid_standin, domain, digits8, reference, tmp_path, fast_clean_fid
):
    """The paper config's path: clean-fid against published statistics (stand-ins made here from the digits), in the
    same metrics JSON as the torch-fidelity numbers; an unverified network or statistics file is refused by default."""
    weights = tmp_path / "weights"
    shutil.copytree(clean_fid_standin, weights)
    model, _ = clean_fid.network(weights, allow_unverified=True)
    real = clean_fid.features(np.array(load_prepared(digits8).images[:200]), model, progress=False).astype(np.float64)
    fid_url, kid_url = clean_fid_statistics_urls("ffhq", 256, "trainval70k")
    np.savez(weights / file_name(fid_url), mu=real.mean(0), sigma=np.cov(real, rowvar=False))
    np.savez(weights / file_name(kid_url), feats=real)
    published = ("ffhq", 256, "trainval70k")
    with pytest.raises(P2Error, match="cannot verify .*inception-2015-12-05.pt: no published hash"):
        write_reference(digits8, tmp_path / "c.npz", weights_dir=weights, backend="clean-fid", published=published)
    info = write_reference(
        digits8,
        tmp_path / "c.npz",
        weights_dir=weights,
        allow_unverified=True,
        floor_size=50,
        backend="clean-fid",
        published=published,
        progress=False,
    )
    assert info["reference_statistics"].startswith("published by clean-fid: ffhq_clean_trainval70k_256.npz")
    assert info["n_reference"] == 200 and info["noise_floor"]["n_held_out"] == 50 and info["mode"] == "clean"
    images = domain[0]
    result = evaluate_images(noisy(images[:60], 60), [reference[0], tmp_path / "c.npz"], tmp_path, "c", bootstrap=0)
    tf, cf = result["backends"]
    assert result["fid"] == tf["fid"] and tf["backend"].startswith("torch-fidelity") and tf["extractor"] == "domain"
    assert cf["backend"].startswith("clean-fid ") and cf["mode"] == "clean" and cf["kid_std"] is None
    assert cf["weights_verified"] is False and cf["comparable_to_inception"] is False
    assert cf["reference_statistics"] == info["reference_statistics"] and cf["n_reference"] == 200
    mu, sigma = scores.statistics(clean_fid.features(noisy(images[:60], 60), model, progress=False))
    assert cf["fid"] == pytest.approx(fast_clean_fid.fid(mu, sigma, real.mean(0), np.cov(real, rowvar=False)), rel=1e-6)
    assert cf["fid"] > info["noise_floor"]["fid"]  # noisy digits score worse than real ones


def test_clean_fid_reference_computed_from_the_dataset(clean_fid_standin, digits8, tmp_path, fast_clean_fid):
    """Datasets without published statistics: clean-fid's features of the prepared images, computed once."""
    data = prepared_subset(digits8, tmp_path / "data", 64)
    info = write_reference(
        data,
        tmp_path / "c.npz",
        weights_dir=clean_fid_standin,
        allow_unverified=True,
        floor_size=16,
        backend="clean-fid",
        progress=False,
    )
    features, mu, _, stored = metrics.read_reference(tmp_path / "c.npz")
    assert stored == json.loads(json.dumps(info)) and features.shape == (64, 2048)
    assert info["reference_statistics"].startswith(f"computed from {data}") and info["backend_name"] == "clean-fid"
    model, _ = clean_fid.network(clean_fid_standin, allow_unverified=True)
    first = clean_fid.features(np.array(load_prepared(digits8).images[:5]), model, progress=False)
    np.testing.assert_allclose(features[:5], first, rtol=1e-5, atol=1e-6)
    assert 0 < info["noise_floor"]["fid"] and np.isfinite(mu).all()
