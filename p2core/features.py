"""A small domain classifier whose penultimate features stand in for Inception on the embedded data.

FID/KID computed with these features are *not* comparable to Inception FID (different feature space, 128-d):
they compare runs of this project on the same dataset with each other, offline and in seconds.
The same network gives the perceptual distance used where LPIPS cannot apply (Figure 1 on 16 px greyscale digits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from p2core.checkpoint import load_checkpoint, save_checkpoint
from p2core.errors import DataError
from p2core.images import to_float
from p2core.progress import progress_bar
from p2core.seeding import derived_seed

FEATURE_DIM = 128
#: training epochs of the digit classifier (about 98% held-out accuracy on the embedded digits)
EPOCHS = 10


class DomainClassifier(nn.Module):
    """Conv net (B, C, S, S) in [-1, 1] -> 10-way logits; ``features`` gives the 128-d penultimate activations.

    ``stages`` returns the activations after each of its three stages, for the perceptual distance.
    """

    def __init__(self, in_channels: int, resolution: int, num_classes: int):
        super().__init__()
        self.resolution = resolution

        def stage(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.GroupNorm(8, cout),
                nn.SiLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.GroupNorm(8, cout),
                nn.SiLU(),
            )

        self.blocks = nn.ModuleList([stage(in_channels, 32), stage(32, 64), stage(64, FEATURE_DIM)])
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else F.avg_pool2d(x, 2))
            outputs.append(x)
        return outputs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)[-1].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _to_input(images_uint8: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [-1, 1] at the classifier's resolution."""
    x = to_float(images_uint8, channels_last_input=False)
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return x


def train_domain_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    out_path: str | Path,
    epochs: int = EPOCHS,
    seed: int = 0,
    holdout: float = 0.2,
    min_accuracy: float = 0.0,
    progress: bool = True,
) -> dict:
    """Train the classifier on a labelled prepared set (uint8 NHWC) and save it; returns held-out accuracy.

    A seeded ``holdout`` fraction is never trained on; its accuracy is stored in the checkpoint and returned.
    Augmentation: random shifts of up to 1/8 of the side (no flips). Below ``min_accuracy`` nothing is saved and
    :class:`DataError` says so: its features would make a poor metric.
    """
    if labels is None:
        raise DataError("the domain feature network needs a labelled dataset (e.g. digits)")
    torch.manual_seed(derived_seed(seed, "init"))
    order = np.random.default_rng(derived_seed(seed, "epoch")).permutation(len(images))
    n_test = int(len(images) * holdout)
    test_idx, train_idx = order[:n_test], order[n_test:]
    x_all = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)  # a small labelled set: copied whole
    y_all = torch.from_numpy(labels).long()
    resolution, channels = images.shape[1], images.shape[3]
    num_classes = int(labels.max()) + 1
    model = DomainClassifier(channels, resolution, num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * -(-len(train_idx) // 64))
    shift = max(1, resolution // 8)
    gen = torch.Generator().manual_seed(derived_seed(seed, "step"))
    for _ in progress_bar(range(epochs), desc="domain classifier", disable=not progress, unit="epoch"):
        model.train()
        for batch in torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=gen)].split(64):
            x = _to_input(x_all[batch], resolution)
            dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=gen))
            x = torch.roll(F.pad(x, (shift,) * 4, value=-1.0), (dy, dx), dims=(2, 3))[..., shift:-shift, shift:-shift]
            loss = F.cross_entropy(model(x), y_all[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    with torch.no_grad():
        predictions = model(_to_input(x_all[test_idx], resolution)).argmax(1)
    accuracy = float((predictions == y_all[test_idx]).float().mean())
    if accuracy < min_accuracy:
        raise DataError(
            f"domain classifier reached only {accuracy:.3f} held-out accuracy (< {min_accuracy}); its "
            "features would make a poor metric: train longer or check the labels"
        )
    config = {"in_channels": channels, "resolution": resolution, "num_classes": num_classes}
    save_checkpoint(
        out_path,
        "domain-classifier",
        state_dict=model.state_dict(),
        config=config,
        heldout_accuracy=accuracy,
        heldout_count=n_test,
    )
    return {"heldout_accuracy": accuracy, "heldout_count": n_test, "train_count": len(train_idx)}


def load_domain_classifier(path: str | Path) -> tuple[DomainClassifier, dict]:
    """The classifier (eval mode, CPU) and its checkpoint dict."""
    state = load_checkpoint(path, "domain-classifier")
    model = DomainClassifier(**state["config"])
    model.load_state_dict(state["state_dict"])
    return model.eval().requires_grad_(False), state


@torch.no_grad()
def domain_logits(path: str | Path, features: np.ndarray) -> np.ndarray:
    """The classifier's logits ``(N, classes)`` from its penultimate ``features`` ``(N, 128)`` (the FID features:
    its head is one linear layer, so nothing is computed twice)."""
    classifier, _ = load_domain_classifier(path)
    return classifier.head(torch.from_numpy(np.asarray(features, dtype=np.float32))).numpy()


class DomainFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor over :class:`DomainClassifier` (registered as ``"domain"``).

    Input: uint8 (B, C, H, W) as torch-fidelity provides; features ``"128"`` (penultimate) and ``"logits"``.
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise DataError("the domain feature extractor needs feature_extractor_weights_path (its checkpoint)")
        self.classifier, _ = load_domain_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return (str(FEATURE_DIM), "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits" if metric == "isc" else str(FEATURE_DIM)

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return None

    def forward(self, x: torch.Tensor):
        x = _to_input(x, self.classifier.resolution)
        features = self.classifier.features(x)
        out = {str(FEATURE_DIM): features, "logits": self.classifier.head(features)}
        return tuple(out[name] for name in self.features_list)
