"""Matplotlib figures of the paper. Each function takes plain data and writes ``<path>.png`` plus a PDF beside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from p2core import provenance, tables  # noqa: E402
from p2core.errors import P2Error  # noqa: E402
from p2core.grids import image_grid  # noqa: E402
from p2core.schedule import make_betas  # noqa: E402
from p2core.schedule import snr as snr_of
from p2core.shards import SampleShards  # noqa: E402
from p2core.trainlog import read_log  # noqa: E402
from p2core.weighting import loss_weights, normalised, vlb_weights  # noqa: E402

# SNR ranges of the paper's three stages
STAGES = (("coarse", 0.0, 1e-2, "#dbe9f6"), ("content", 1e-2, 1e0, "#fde5c8"), ("clean-up", 1e0, 1e4, "#e3f1de"))
COLOURS = {"baseline": "#1f77b4", "p2": "#d62728"}
OTHER_COLOURS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def save_figure(fig, path: str | Path) -> None:
    """Write ``path`` (PNG, 150 dpi) and the same figure as PDF beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    plt.close(fig)


def _shade_stages(ax, label: bool = True, invert: bool = True) -> None:
    """Shade the paper's three SNR stages on a log x axis; ``invert`` puts high noise on the right (once per
    shared axis: inverting twice cancels)."""
    for name, low, high, colour in STAGES:
        ax.axvspan(max(low, 1e-6), high, color=colour, zorder=0, lw=0)
        if label:
            ax.text(
                np.sqrt(max(low, 1e-5) * high),
                0.98,
                name,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=8,
                color="0.35",
            )
    ax.set_xscale("log")
    if invert:
        ax.invert_xaxis()


def _colour(label: str, index: int) -> str:
    """Baseline blue and P2 red everywhere; other series take the other colours in order."""
    return COLOURS.get(label, OTHER_COLOURS[index % len(OTHER_COLOURS)])


def figure1(table: pd.DataFrame, distance_name: str, dataset: str, path: str | Path) -> None:
    """Distance vs SNR for same-image and different-image pairs (columns of :func:`distance_vs_snr`)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    _shade_stages(ax)
    for key, label, colour in (
        ("same", "same image, two noises", "#2b8cbe"),
        ("different", "two different images", "#e34a33"),
    ):
        ax.plot(table["snr"], table[f"{key}_mean"], "o-", ms=3, color=colour, label=label)
        ax.fill_between(
            table["snr"],
            table[f"{key}_mean"] - table[f"{key}_std"],
            table[f"{key}_mean"] + table[f"{key}_std"],
            color=colour,
            alpha=0.2,
            lw=0,
        )
    ax.set_xlabel("SNR(t)")
    ax.set_ylabel(distance_name)
    ax.set_title(f"Fig. 1 ({dataset}): perceptual distance between noisy images", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


def figure2(
    noisy: np.ndarray, predicted: np.ndarray, timesteps: list[int], snrs: list[float], title: str, path: str | Path
) -> None:
    """Rows: pairs of ``x_t`` and ``x0_hat`` per image; columns: timesteps labelled with their SNR.

    ``noisy``/``predicted``: uint8 (T, N, H, W, C) from :func:`p2core.analysis.reconstructions`.
    """
    steps, count = noisy.shape[:2]
    fig, axes = plt.subplots(2 * count, steps, figsize=(1.1 * steps, 1.1 * 2 * count), squeeze=False)
    for column in range(steps):
        for image in range(count):
            for offset, (source, name) in enumerate(((noisy, "x_t"), (predicted, "x0_hat"))):
                ax = axes[2 * image + offset, column]
                picture = source[column, image]
                ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=255)
                ax.set_xticks([])
                ax.set_yticks([])
                if column == 0:
                    ax.set_ylabel(name, fontsize=7)
        axes[0, column].set_title(f"t={timesteps[column]}\nSNR={snrs[column]:.1e}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def figure3(num_timesteps: int, weightings: dict[str, tuple[str, dict]], path: str | Path) -> None:
    """Weights over SNR for the linear and cosine schedules.

    Top: the paper's view, ``lambda'_t`` over the VLB terms, **normalised to sum to 1** (as the paper plots).
    Bottom: the **unnormalised** per-timestep weight on the eps-MSE term that training actually multiplies.
    ``weightings``: label -> (weighting name, parameters).
    """
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex="col")
    for column, schedule in enumerate(("linear", "cosine")):
        betas = make_betas(schedule, num_timesteps)
        abar = np.cumprod(1 - betas)
        snr = snr_of(abar)
        keep = snr > 1e-6  # the clipped last cosine steps have SNR ~ 0
        for row in range(2):
            _shade_stages(axes[row, column], label=row == 0, invert=row == 0)  # the rows share their x axis
        for index, (label, (name, params)) in enumerate(weightings.items()):
            colour = _colour(label, index)
            axes[0, column].plot(
                snr[keep], normalised(vlb_weights(name, betas, **params))[keep], color=colour, label=label
            )
            axes[1, column].plot(snr[keep], loss_weights(name, abar, **params)[keep], color=colour, label=label)
        axes[0, column].set_title(f"{schedule} schedule, T={num_timesteps}", fontsize=9)
        axes[0, column].set_yscale("log")
        axes[1, column].set_yscale("log")
        axes[1, column].set_xlabel("SNR(t)")
    axes[0, 0].set_ylabel("lambda'_t over VLB terms\n(normalised: sums to 1)", fontsize=8)
    axes[1, 0].set_ylabel("w_t on eps-MSE\n(unnormalised: used in training)", fontsize=8)
    axes[0, 1].legend(fontsize=8)
    fig.suptitle("Fig. 3: loss weights over SNR", fontsize=10)
    save_figure(fig, path)


def _mean_std_lines(ax, table: pd.DataFrame, x: str, group: str, y: str = "fid", style=lambda label: "-") -> None:
    """One line per ``group`` value, mean +- std over seeds, in the line style ``style(label)`` gives. The colour
    follows the objective's family (the part of the label before " / ", without a "_cosine" suffix), so a family
    keeps its colour across line styles."""

    def family(label) -> str:
        return str(label).split(" / ")[0].removesuffix("_cosine")

    others = [f for f in dict.fromkeys(family(label) for label in table[group]) if f not in COLOURS]
    for label, rows in table.groupby(group, sort=False):
        stats = rows.groupby(x)[y].agg(["mean", "std", "count"]).reset_index().sort_values(x)
        colour = _colour(family(label), others.index(family(label)) if family(label) in others else 0)
        ax.plot(
            stats[x],
            stats["mean"],
            "o" + style(str(label)),
            ms=3,
            color=colour,
            label=f"{label} (n={int(stats['count'].max())})",
        )
        spread = stats["std"].fillna(0)
        ax.fill_between(stats[x], stats["mean"] - spread, stats["mean"] + spread, color=colour, alpha=0.2, lw=0)


def figure4(table: pd.DataFrame, extractor: str, path: str | Path) -> None:
    """FID during training (``step``, ``fid`` per ``objective``; mean +- std over seeds; ``*_cosine`` dashed)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    _mean_std_lines(ax, table, "step", "objective", style=lambda label: "--" if label.endswith("_cosine") else "-")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"FID ({extractor} features)")
    ax.set_title("Fig. 4: FID during training", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)


SAMPLER_STYLES = {"ddpm": "-", "ddim": "--", "dpmpp2m": ":"}


def figure7(table: pd.DataFrame, extractor: str, path: str | Path) -> None:
    """FID vs the number of sampling steps (``steps``, ``fid`` per ``objective`` and sampler kind: ancestral solid,
    DDIM dashed, DPM-Solver++(2M) dotted)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    table = table.assign(series=table["objective"] + " / " + table["kind"])
    kinds = dict(zip(table["series"], table["kind"], strict=True))
    _mean_std_lines(ax, table, "steps", "series", style=lambda label: SAMPLER_STYLES.get(kinds[label], "-."))
    ax.set_xscale("log")
    ticks = sorted(table["steps"].unique())
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(f"FID ({extractor} features)")
    ax.set_title("Fig. 7: FID vs number of sampling steps", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def sample_comparison(grids: dict[str, np.ndarray], title: str, path: str | Path) -> None:
    """Figures 5/6: sample grids side by side (``label -> uint8 (H, W, C)`` grid), same seeds in every panel."""
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 4.6), squeeze=False)
    for ax, (label, grid) in zip(axes[0], grids.items(), strict=True):
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def training_curves(logs: dict[str, list[pd.DataFrame]], title: str, path: str | Path) -> None:
    """Training loss by quarter of t over training steps: one panel per quarter, one colour per objective, each
    seed's ``train.csv`` (``step``, ``loss_q0`` .. ``loss_q3``) a thin line and the mean over seeds bold.

    The loss is the objective as trained (P2-weighted eps-MSE plus the VLB term), so the panels show where each
    objective puts the model's effort over t (q0: the least noisy quarter, t < T/4)."""
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2), sharex=True, gridspec_kw={"wspace": 0.3})
    for index, (label, seeds) in enumerate(logs.items()):
        colour = _colour(label, index)
        for quarter, ax in enumerate(axes):
            column = f"loss_q{quarter}"
            for log in seeds:
                ax.plot(log["step"], log[column], color=colour, lw=0.6, alpha=0.35)
            mean = pd.concat(seeds).groupby("step")[column].mean()
            ax.plot(mean.index, mean.values, color=colour, lw=2, label=f"{label} (mean of {len(seeds)})")
    names = ("t < T/4 (least noisy)", "T/4 <= t < T/2", "T/2 <= t < 3T/4", "t >= 3T/4 (noisiest)")
    for name, ax in zip(names, axes, strict=True):
        ax.set_title(name, fontsize=9)
        ax.set_yscale("log")
        for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("training step")
    axes[0].set_ylabel("training loss (as weighted)")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


FigureFn = Callable[[list[str], str | Path, "FigureOptions"], None]
FIGURES: dict[str, FigureFn] = {}


def register(name: str) -> Callable[[FigureFn], FigureFn]:
    """Add a figure to the registry under ``name``: a function ``(inputs, out, options)`` drawing it from files."""

    def add(fn: FigureFn) -> FigureFn:
        FIGURES[name] = fn
        return fn

    return add


@dataclass
class FigureOptions:
    """What some figures take besides their input files: ``title``; Figure 3's ``weightings``
    ``{label: (name, params)}`` over ``num_timesteps``; the images per panel of the sample figure."""

    title: str | None = None
    num_timesteps: int = 1000
    weightings: dict[str, tuple[str, dict]] | None = None
    grid_count: int = 36


def draw(which: str, inputs: list[str], out: str | Path, options: FigureOptions | None = None) -> None:
    """Draw figure ``which`` (a name in :data:`FIGURES`) from its input files into ``out`` (PNG, PDF beside it).

    ``fig1``: the distance-vs-SNR CSV; ``fig2``: the reconstructions ``.npz``; ``fig3``: no inputs;
    ``fig4``, ``fig7``: metrics JSON files; ``samples``: ``LABEL=SHARD.npz`` items (several per label for a sharded
    set), one panel of ``grid_count`` images per label; ``curves``: ``LABEL=train.csv`` items (one per seed), see
    :func:`training_curves`.
    """
    if which not in FIGURES:
        raise P2Error(f"unknown figure {which!r}; choose one of {', '.join(FIGURES)}")
    FIGURES[which](list(inputs), out, options or FigureOptions())
    provenance.write_sidecar(out, {"inputs": list(inputs), "pdf": str(Path(out).with_suffix(".pdf"))})


@register("fig1")
def _fig1(inputs, out, options) -> None:
    table = pd.read_csv(inputs[0])
    figure1(table, table["distance"].iloc[0], table["dataset"].iloc[0], out)


@register("fig2")
def _fig2(inputs, out, options) -> None:
    with np.load(inputs[0]) as arrays:
        figure2(
            arrays["noisy"],
            arrays["predicted"],
            arrays["timesteps"].tolist(),
            arrays["snr"].tolist(),
            options.title or "Fig. 2: reconstructions x0_hat from x_t",
            out,
        )


@register("fig3")
def _fig3(inputs, out, options) -> None:
    figure3(options.num_timesteps, options.weightings or {"baseline": ("uniform", {})}, out)


@register("fig4")
def _fig4(inputs, out, options) -> None:
    table = tables.fid_during_training(tables.collect(inputs))
    figure4(table, table["extractor"].iloc[0], out)


@register("fig7")
def _fig7(inputs, out, options) -> None:
    rows = tables.figure7_rows(tables.collect(inputs))
    figure7(rows, rows["extractor"].iloc[0], out)


def learned_weighting(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> None:
    """The learned weight ``e^-u(t)`` of each run at its final checkpoint beside P2's (gamma 1, k 1) and the uniform
    weight, over SNR, each normalised to mean 1 over the timesteps (Figure 3's view of what training multiplies).
    ``curves``: label -> (alphas_cumprod (T,), learned weight (T,))."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    _shade_stages(ax, label=True, invert=False)
    for index, (label, (abar, weight)) in enumerate(curves.items()):
        ax.plot(snr_of(abar), weight / weight.mean(), color=_colour(label, index + 2), label=label)
    abar = next(iter(curves.values()))[0]
    for name, params, colour in (("p2", {"gamma": 1.0, "k": 1.0}, COLOURS["p2"]), ("uniform", {}, COLOURS["baseline"])):
        weight = loss_weights(name, abar, **params)
        ax.plot(snr_of(abar), weight / weight.mean(), "--", color=colour, label=f"{name} (fixed)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("SNR(t)")
    ax.set_ylabel("weight on eps-MSE\n(normalised: mean 1 over t)", fontsize=8)
    ax.legend(fontsize=8)
    fig.suptitle("Fig. 9: the learned weighting (EDM2) at the end of training, and P2's", fontsize=10)
    save_figure(fig, path)


@register("learned")
def _learned(inputs, out, options) -> None:
    curves = {}
    for label, paths in _labelled(inputs).items():
        for path in paths:
            abar, weight = learned_curve(path)
            curves[label if len(paths) == 1 else f"{label} ({Path(path).parent.name})"] = (abar, weight)
    learned_weighting(curves, out)


def learned_curve(checkpoint: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(alphas_cumprod, e^-u(t))`` of a learned-weighting run's checkpoint (``ema.pt`` or ``checkpoint.pt``)."""
    from p2core.checkpoint import load_checkpoint, load_weights
    from p2core.diffusion import process_of
    from p2core.uncertainty import LEARNED_WEIGHTINGS

    state = load_checkpoint(checkpoint)
    diffusion = state["spec"]["diffusion"]
    if "uncertainty" not in state or diffusion.get("weighting") not in LEARNED_WEIGHTINGS:
        raise P2Error(f"{checkpoint} has no learned weighting (its run's weighting is not 'learned')")
    abar = process_of(diffusion).terms.alphas_cumprod
    head = LEARNED_WEIGHTINGS[diffusion["weighting"]](abar)
    load_weights(head, state["uncertainty"], checkpoint)
    return abar, head.weights()


@register("samples")
def _samples(inputs, out, options) -> None:
    grids = {
        label: image_grid(SampleShards(paths).head(options.grid_count)) for label, paths in _labelled(inputs).items()
    }
    sample_comparison(grids, options.title or "samples", out)


@register("curves")
def _curves(inputs, out, options) -> None:
    logs = {label: [read_log(path) for path in paths] for label, paths in _labelled(inputs).items()}
    training_curves(logs, options.title or "training loss by quarter of t", out)


def _labelled(inputs: list[str]) -> dict[str, list[str]]:
    """``["a=x", "b=y", "a=z"]`` -> ``{"a": ["x", "z"], "b": ["y"]}`` (order kept)."""
    groups: dict[str, list[str]] = {}
    for item in inputs:
        label, sep, path = item.partition("=")
        if not sep:
            raise P2Error(f"input {item!r} must be LABEL=PATH")
        groups.setdefault(label, []).append(path)
    return groups
