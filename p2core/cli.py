"""``p2core <command>``: one subcommand per pipeline step. Input problems print one line and exit with code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from p2core import provenance
from p2core.errors import P2Error


def _load_spec(text: str) -> dict:
    """A spec given inline as JSON/YAML text, or as a path to a JSON/YAML file."""
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise P2Error(f"spec file {path} does not exist (give a path, or inline JSON starting with '{{')")
        text = path.read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    try:
        value = yaml.safe_load(text) if value is None else value
    except yaml.YAMLError as exc:
        raise P2Error(f"spec is neither a readable file nor valid JSON/YAML: {exc}".splitlines()[0]) from None
    if not isinstance(value, dict):
        raise P2Error("spec must be a mapping (JSON object or YAML dict)")
    return value


def cmd_prepare(args) -> None:
    from p2core import data

    if args.embedded:
        meta = data.prepare_embedded(args.embedded, args.out, args.resolution)
    else:
        meta = data.prepare_folder(
            args.source,
            args.out,
            args.resolution,
            args.name or Path(args.source).stem,
            args.flip,
            args.skip_unreadable,
            workers=args.workers,
        )
    print(json.dumps({k: meta[k] for k in ("count", "resolution", "channels", "flip")}))


def cmd_train(args) -> None:
    import torch

    from p2core.train import TrainSpec, train

    torch.set_num_threads(args.threads)
    final = train(
        TrainSpec.from_dict(_load_spec(args.spec)),
        args.data,
        args.out,
        device=args.device,
        progress=not args.no_progress,
    )
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {final}")


def cmd_sample(args) -> None:
    import torch

    from p2core.sample import draw_shard

    torch.set_num_threads(args.threads)
    images = draw_shard(
        args.checkpoint,
        args.sampler,
        args.out,
        args.start,
        args.num,
        args.batch_size,
        args.seed,
        args.device,
        args.precision,
        progress=not args.no_progress,
    )
    print(f"wrote images {args.start}..{args.start + len(images) - 1} to {args.out}")


def cmd_grid(args) -> None:
    from p2core.grids import save_sample_grid

    save_sample_grid(args.samples, args.out, args.count, args.scale)


def cmd_train_features(args) -> None:
    from p2core.data import load_prepared
    from p2core.features import train_domain_classifier

    data = load_prepared(args.data)
    result = train_domain_classifier(
        data.images,
        data.labels,
        args.out,
        epochs=args.epochs,
        seed=args.seed,
        min_accuracy=args.min_accuracy,
        progress=not args.no_progress,
    )
    print(json.dumps(result))


def cmd_reference(args) -> None:
    import torch

    from p2core.metrics import write_reference

    torch.set_num_threads(args.threads)
    info = write_reference(
        args.data,
        args.out,
        args.extractor,
        args.domain_weights,
        args.weights_dir,
        args.allow_unverified_weights,
        args.floor_size,
        args.kid_subset_size,
        args.device,
        progress=not args.no_progress,
        backend=args.backend,
        published=_published(args.published) if args.published else None,
    )
    print(json.dumps({k: info[k] for k in ("backend", "extractor", "n_reference", "weights_verified", "noise_floor")}))


def cmd_evaluate(args) -> None:
    import torch

    from p2core.metrics import evaluate_samples

    torch.set_num_threads(args.threads)
    result = evaluate_samples(
        args.samples,
        args.reference,
        args.out,
        args.kid_subset_size,
        args.bootstrap,
        args.device,
        tags=_parse_tags(args.tag),
        progress=not args.no_progress,
    )
    print(
        json.dumps(
            [
                {k: b[k] for k in ("backend", "extractor", "fid", "kid_mean", "weights_verified")}
                for b in result["backends"]
            ]
        )
    )


def _published(text: str) -> tuple[str, int, str]:
    """``--published NAME,RESOLUTION,SPLIT`` (clean-fid's statistics, e.g. ``ffhq,256,trainval70k``)."""
    parts = text.split(",")
    if len(parts) != 3 or not parts[1].isdigit():
        raise P2Error(f"--published {text!r}: expected NAME,RESOLUTION,SPLIT such as ffhq,256,trainval70k")
    return parts[0], int(parts[1]), parts[2]


def _kid_subset(text: str) -> int | None:
    """``--kid-subset-size``: an integer, or ``auto`` (None: min(1000, smaller set))."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def _parse_tags(pairs: list[str]) -> dict:
    """``["seed=0", "objective=p2"]`` -> ``{"seed": 0, "objective": "p2"}`` (integers parsed)."""
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise P2Error(f"tag {pair!r} is not KEY=VALUE")
        tags[key] = int(value) if value.lstrip("-").isdigit() else value
    return tags


def cmd_distance_vs_snr(args) -> None:
    import torch

    from p2core.analysis import write_distance_vs_snr

    torch.set_num_threads(args.threads)
    write_distance_vs_snr(
        args.data,
        args.out,
        args.distance,
        args.weights_dir,
        args.domain_weights,
        args.allow_unverified_weights,
        args.schedule,
        args.num_timesteps,
        args.points,
        args.pairs,
        args.seed,
    )


def cmd_reconstruct(args) -> None:
    from p2core.analysis import write_reconstructions

    write_reconstructions(args.checkpoint, args.data, args.out, args.num_images, args.points, args.seed, args.device)


def cmd_figure(args) -> None:
    from p2core.plots import draw

    weightings = {label: (name, params) for label, (name, params) in _load_spec(args.weightings).items()}
    draw(args.which, args.inputs, args.out, args.title, args.num_timesteps, weightings, args.grid_count)


def cmd_table(args) -> None:
    from p2core.tables import write_table

    write_table(args.which, args.inputs, args.out, args.literature, args.markdown)


def cmd_runs(args) -> None:
    from p2core.runs import find_runs, format_table, run_status, write_csv

    statuses = [run_status(folder, args.folder) for folder in find_runs(args.folder)]
    if not statuses:
        raise P2Error(f"no training runs (folders with run.json) under {args.folder}")
    if args.csv:
        write_csv(statuses, args.csv)
    print(json.dumps(statuses, indent=2) if args.json else format_table(statuses))


def cmd_prefetch(args) -> None:
    from p2core.weights import prefetch

    for path in prefetch(args.weights_dir):
        print(f"ready: {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="prepare a dataset into images.npy + meta.json")
    source = prepare.add_mutually_exclusive_group(required=True)
    source.add_argument("--embedded", help="name of an embedded dataset (digits)")
    source.add_argument("--source", help="image folder or zip (png/jpg/jpeg/webp, searched recursively)")
    prepare.add_argument("--out", required=True, help="output folder")
    prepare.add_argument("--resolution", type=int, required=True, help="side length in pixels")
    prepare.add_argument("--name", help="dataset name recorded in meta.json")
    prepare.add_argument("--no-flip", dest="flip", action="store_false", help="horizontal flips are not valid")
    prepare.add_argument("--skip-unreadable", action="store_true", help="skip and count unreadable images")
    prepare.add_argument("--workers", type=int, help="decoding processes (default: the CPU cores available)")
    prepare.set_defaults(run=cmd_prepare)

    train = commands.add_parser("train", help="train or resume a diffusion model")
    train.add_argument("--data", required=True, help="prepared dataset folder")
    train.add_argument("--out", required=True, help="run folder (resumed if it holds checkpoint.pt)")
    train.add_argument("--spec", required=True, help="TrainSpec as JSON/YAML text or a file path")
    train.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    train.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(run=cmd_train)

    sample = commands.add_parser("sample", help="draw samples from a checkpoint's EMA weights")
    sample.add_argument("--checkpoint", required=True, help="ema.pt, ema_step{N}.pt or checkpoint.pt")
    sample.add_argument("--sampler", default="ddpm250", help="ddpm250, ddim25, ddpm10,10,10, ... (default ddpm250)")
    sample.add_argument("--num", type=int, required=True, help="number of images")
    sample.add_argument(
        "--start",
        type=int,
        default=0,
        help="number of the first image: draws images START..START+NUM-1 of the set (a shard)",
    )
    sample.add_argument("--batch-size", type=int, default=64)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", default="auto")
    sample.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        default="fp32",
        help="auto: bf16 where the device has native bf16",
    )
    sample.add_argument("--out", required=True, help="output shard .npz (uint8 NHWC, key arr_0, and first_index)")
    sample.add_argument("--grid", help="also write a PNG grid here")
    sample.add_argument("--grid-count", type=int, default=64, help="images in the grid")
    sample.add_argument("--grid-scale", type=int, default=1, help="nearest-neighbour upscaling of the grid")
    sample.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    sample.add_argument("--no-progress", action="store_true")
    sample.set_defaults(run=cmd_sample)

    grid = commands.add_parser("grid", help="a PNG grid of the first images of a sample set")
    grid.add_argument("samples", nargs="+", help="the set's shard .npz files")
    grid.add_argument("--out", required=True, help="PNG")
    grid.add_argument("--count", type=int, default=64, help="images in the grid")
    grid.add_argument("--scale", type=int, default=1, help="nearest-neighbour upscaling")
    grid.set_defaults(run=cmd_grid)

    features = commands.add_parser("train-features", help="train the domain feature network on a labelled dataset")
    features.add_argument("--data", required=True, help="prepared, labelled dataset folder")
    features.add_argument("--out", required=True, help="output checkpoint (.pt)")
    features.add_argument("--epochs", type=int, default=10)
    features.add_argument("--seed", type=int, default=0)
    features.add_argument("--min-accuracy", type=float, default=0.97, help="fail below this held-out accuracy")
    features.add_argument("--no-progress", action="store_true")
    features.set_defaults(run=cmd_train_features)

    unverified = dict(
        action="store_true",
        help="use weights files whose SHA-256 is not the official one (stand-ins); results say weights_verified: false",
    )
    reference = commands.add_parser("reference", help="reference statistics of a prepared dataset for FID/KID")
    reference.add_argument("--backend", default="torch-fidelity", choices=("torch-fidelity", "clean-fid"))
    reference.add_argument(
        "--published", help="clean-fid: use its published statistics NAME,RESOLUTION,SPLIT (ffhq,256,trainval70k)"
    )
    reference.add_argument("--data", required=True, help="prepared dataset folder")
    reference.add_argument(
        "--extractor",
        default="inception-v3-compat",
        choices=("inception-v3-compat", "domain"),
        help="torch-fidelity's extractor (clean-fid always uses its TorchScript Inception)",
    )
    reference.add_argument("--domain-weights", help="domain feature network checkpoint (extractor 'domain')")
    reference.add_argument("--weights-dir", default="resources/weights", help="where prefetched weights live")
    reference.add_argument("--allow-unverified-weights", **unverified)
    reference.add_argument(
        "--floor-size",
        type=int,
        default=10_000,
        help="real images held out for the real-vs-real noise floor (use the sample count)",
    )
    reference.add_argument("--kid-subset-size", type=_kid_subset, default=None, help="integer or auto (default)")
    reference.add_argument("--device", default="auto")
    reference.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    reference.add_argument("--no-progress", action="store_true")
    reference.add_argument("--out", required=True, help="statistics .npz")
    reference.set_defaults(run=cmd_reference)

    evaluate = commands.add_parser("evaluate", help="FID and KID of samples against reference statistics")
    evaluate.add_argument("--samples", required=True, nargs="+", help="the sample set's shard .npz files")
    evaluate.add_argument(
        "--reference", required=True, nargs="+", help="statistics .npz files from `p2core reference`, one per backend"
    )
    evaluate.add_argument(
        "--kid-subset-size", type=_kid_subset, default=None, help="integer or auto: min(1000, smaller set)"
    )
    evaluate.add_argument("--bootstrap", type=int, default=100, help="resamples for the FID interval (0: none)")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.add_argument("--tag", action="append", default=[], help="KEY=VALUE recorded in the JSON (repeatable)")
    evaluate.add_argument("--out", required=True, help="metrics JSON")
    evaluate.set_defaults(run=cmd_evaluate)

    snr = commands.add_parser("distance-vs-snr", help="Figure 1 data: perceptual distance of noisy pairs vs SNR")
    snr.add_argument("--data", required=True)
    snr.add_argument("--distance", choices=("lpips", "domain"), required=True)
    snr.add_argument("--domain-weights", help="domain feature network (distance 'domain')")
    snr.add_argument("--weights-dir", default="resources/weights")
    snr.add_argument("--allow-unverified-weights", **unverified)
    snr.add_argument("--schedule", default="linear")
    snr.add_argument("--num-timesteps", type=int, default=1000)
    snr.add_argument("--points", type=int, default=25, help="number of timesteps evaluated")
    snr.add_argument("--pairs", type=int, default=128)
    snr.add_argument("--seed", type=int, default=0)
    snr.add_argument("--threads", type=int, default=1)
    snr.add_argument("--out", required=True, help="CSV")
    snr.set_defaults(run=cmd_distance_vs_snr)

    recon = commands.add_parser("reconstruct", help="Figure 2 data: x0_hat predicted from x_t at several t")
    recon.add_argument("--checkpoint", required=True)
    recon.add_argument("--data", required=True)
    recon.add_argument("--num-images", type=int, default=4)
    recon.add_argument("--points", type=int, default=8)
    recon.add_argument("--seed", type=int, default=0)
    recon.add_argument("--device", default="auto")
    recon.add_argument("--out", required=True, help=".npz")
    recon.set_defaults(run=cmd_reconstruct)

    figure = commands.add_parser("figure", help="draw a figure (PNG + PDF)")
    figure.add_argument("which", choices=("fig1", "fig2", "fig3", "fig4", "fig7", "samples", "curves"))
    figure.add_argument("inputs", nargs="*", help="input files (samples: LABEL=SHARD.npz; curves: LABEL=train.csv)")
    figure.add_argument("--out", required=True, help="PNG path; the PDF goes beside it")
    figure.add_argument("--title")
    figure.add_argument("--num-timesteps", type=int, default=1000, help="fig3")
    figure.add_argument(
        "--weightings",
        default='{"baseline": ["uniform", {}], "p2": ["p2", {"gamma": 1.0, "k": 1.0}]}',
        help="fig3: JSON {label: [weighting, params]}",
    )
    figure.add_argument("--grid-count", type=int, default=36, help="samples: images per panel")
    figure.set_defaults(run=cmd_figure)

    table = commands.add_parser("table", help="build a table CSV from metrics JSON files")
    table.add_argument("which", choices=("table1", "table2", "table3", "table4", "summary"))
    table.add_argument("inputs", nargs="+", help="metrics JSON files (table2: the table1 CSV; summary: table CSVs)")
    table.add_argument("--literature", help="table2: CSV of published numbers (model, dataset, fid, source)")
    table.add_argument("--out", required=True)
    table.add_argument("--markdown", help="also write a Markdown rendering here")
    table.set_defaults(run=cmd_table)

    runs = commands.add_parser("runs", help="one line per training run: step, loss, img/s, ETA, state")
    runs.add_argument("folder", nargs="?", default="results", help="searched recursively for run folders")
    runs.add_argument("--json", action="store_true", help="a JSON list instead of the table")
    runs.add_argument("--csv", help="also write the table with provenance columns (commit, device, ...) as CSV here")
    runs.set_defaults(run=cmd_runs)

    fetch = commands.add_parser(
        "prefetch", help="download the metric weights and clean-fid's FFHQ statistics (run with internet)"
    )
    fetch.add_argument("--weights-dir", default="resources/weights")
    fetch.set_defaults(run=cmd_prefetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        provenance.set_step(args.command, list(sys.argv[1:] if argv is None else argv))
        args.run(args)
    except P2Error as exc:
        print(f"p2core {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        provenance.end_step()  # a library call made after main() returns is not this command's step
    return 0


if __name__ == "__main__":
    sys.exit(main())
