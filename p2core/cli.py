"""``p2core <command>``: one subcommand per pipeline step. Input problems print one line and exit with code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

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
            args.source, args.out, args.resolution, args.name or Path(args.source).stem, args.flip, args.skip_unreadable
        )
    print(json.dumps({k: meta[k] for k in ("count", "resolution", "channels", "flip")}))


def cmd_train(args) -> None:
    from p2core.train import TrainSpec, train

    spec = TrainSpec.from_dict(_load_spec(args.spec))
    final = train(spec, args.data, args.out, device=args.device, progress=not args.no_progress)
    print(f"wrote {final}")


def cmd_sample(args) -> None:
    from p2core.sample import generate, image_grid, save_png, save_samples

    images = generate(
        args.checkpoint, args.sampler, args.num, args.batch_size, args.seed, args.device, args.precision,
        progress=not args.no_progress,
    )
    save_samples(args.out, images)
    if args.grid:
        save_png(args.grid, image_grid(images[: args.grid_count]), scale=args.grid_scale)
    print(f"wrote {len(images)} samples to {args.out}")


def cmd_train_features(args) -> None:
    from p2core.data import load_prepared
    from p2core.features import train_domain_classifier

    data = load_prepared(args.data)
    result = train_domain_classifier(data.images, data.labels, args.out, epochs=args.epochs, seed=args.seed,
                                     progress=not args.no_progress)
    print(json.dumps(result))
    if result["heldout_accuracy"] < args.min_accuracy:
        raise P2Error(f"domain classifier reached only {result['heldout_accuracy']:.3f} held-out accuracy "
                      f"(< {args.min_accuracy}); its features would make a poor metric")


def cmd_evaluate(args) -> None:
    from p2core.data import load_prepared
    from p2core.metrics import fid_kid, write_json
    from p2core.sample import load_samples

    data = load_prepared(args.data)
    generated = load_samples(args.samples)
    result = fid_kid(
        generated, data.images, args.extractor, reference_name=f"{data.meta.get('name', 'data')}-{data.meta['sha256'][:12]}",
        domain_weights=args.domain_weights, weights_dir=args.weights_dir, kid_subset_size=args.kid_subset_size,
        cache_dir=args.cache_dir, device=args.device,
    )
    result.update(samples=str(args.samples), dataset=data.meta.get("name"), dataset_sha256=data.meta["sha256"])
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("fid", "kid_mean", "kid_std", "extractor")}))


def cmd_prefetch(args) -> None:
    from p2core.metrics import prefetch

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
    prepare.set_defaults(run=cmd_prepare)

    train = commands.add_parser("train", help="train or resume a diffusion model")
    train.add_argument("--data", required=True, help="prepared dataset folder")
    train.add_argument("--out", required=True, help="run folder (resumed if it holds checkpoint.pt)")
    train.add_argument("--spec", required=True, help="TrainSpec as JSON/YAML text or a file path")
    train.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(run=cmd_train)

    sample = commands.add_parser("sample", help="draw samples from a checkpoint's EMA weights")
    sample.add_argument("--checkpoint", required=True, help="ema.pt, ema_step{N}.pt or checkpoint.pt")
    sample.add_argument("--sampler", default="ddpm250", help="ddpm250, ddim25, ddpm10,10,10, ... (default ddpm250)")
    sample.add_argument("--num", type=int, required=True, help="number of images")
    sample.add_argument("--batch-size", type=int, default=64)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", default="auto")
    sample.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    sample.add_argument("--out", required=True, help="output .npz (uint8 NHWC, key arr_0)")
    sample.add_argument("--grid", help="also write a PNG grid here")
    sample.add_argument("--grid-count", type=int, default=64, help="images in the grid")
    sample.add_argument("--grid-scale", type=int, default=1, help="nearest-neighbour upscaling of the grid")
    sample.add_argument("--no-progress", action="store_true")
    sample.set_defaults(run=cmd_sample)

    features = commands.add_parser("train-features", help="train the domain feature network on a labelled dataset")
    features.add_argument("--data", required=True, help="prepared, labelled dataset folder")
    features.add_argument("--out", required=True, help="output checkpoint (.pt)")
    features.add_argument("--epochs", type=int, default=10)
    features.add_argument("--seed", type=int, default=0)
    features.add_argument("--min-accuracy", type=float, default=0.97, help="fail below this held-out accuracy")
    features.add_argument("--no-progress", action="store_true")
    features.set_defaults(run=cmd_train_features)

    evaluate = commands.add_parser("evaluate", help="FID and KID of samples against a prepared dataset")
    evaluate.add_argument("--samples", required=True, help=".npz of uint8 NHWC samples (key arr_0)")
    evaluate.add_argument("--data", required=True, help="prepared reference dataset folder")
    evaluate.add_argument("--extractor", default="inception-v3-compat", choices=("inception-v3-compat", "domain"))
    evaluate.add_argument("--domain-weights", help="domain feature network checkpoint (extractor 'domain')")
    evaluate.add_argument("--weights-dir", default="resources/weights", help="where prefetched weights live")
    evaluate.add_argument("--kid-subset-size", type=int, default=1000)
    evaluate.add_argument("--cache-dir", help="cache reference features here")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--out", required=True, help="metrics JSON")
    evaluate.set_defaults(run=cmd_evaluate)

    fetch = commands.add_parser("prefetch", help="download Inception and AlexNet weights (run with internet)")
    fetch.add_argument("--weights-dir", default="resources/weights")
    fetch.set_defaults(run=cmd_prefetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except P2Error as exc:
        print(f"p2core {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
