"""``p2core <command>``: one subcommand per pipeline step. Input problems print one line and exit with code 2.

Each command is two functions: ``args_<command>(parser)`` declares its options and ``cmd_<command>(args)`` passes
them to the p2core function that does the work. Nothing else happens here: no computation, and every name list (the
choices of an option) is read from the module that owns it. :mod:`p2core.fingerprint` starts each step's code
fingerprint at these two functions, so an option's default counts as part of the step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from p2core import provenance, trace
from p2core.backends import BACKENDS, DISTANCES, EXTRACTORS, INCEPTION, TORCH_FIDELITY
from p2core.device import PRECISIONS
from p2core.errors import P2Error
from p2core.weights import DEFAULT_WEIGHTS_DIR


# --------------------------------------------------------------------------------------- shared options
def _device_option(parser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")


def _threads_option(parser, default: int | None = None) -> None:
    parser.add_argument("--threads", type=int, default=default or os.cpu_count(), help="CPU threads")


def _layout(value: str) -> bool | str:
    """``--channels-last`` values: auto, true or false."""
    choices = {"auto": "auto", "true": True, "false": False}
    if value.lower() not in choices:
        raise argparse.ArgumentTypeError(f"{value!r}: choose auto, true or false")
    return choices[value.lower()]


def _progress_option(parser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _weights_options(parser) -> None:
    parser.add_argument("--weights-dir", default=str(DEFAULT_WEIGHTS_DIR), help="where prefetched weights live")
    parser.add_argument(
        "--allow-unverified-weights",
        action="store_true",
        help="use weights files whose SHA-256 is not the official one (stand-ins); results say weights_verified: false",
    )


def _set_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


# ------------------------------------------------------------------------------------------------ commands
def args_prepare(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--embedded", help="name of an embedded dataset (digits)")
    source.add_argument("--source", help="image folder or zip (png/jpg/jpeg/webp, searched recursively)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--resolution", type=int, required=True, help="side length in pixels")
    parser.add_argument("--name", help="dataset name recorded in meta.json")
    parser.add_argument("--no-flip", dest="flip", action="store_false", help="horizontal flips are not valid")
    parser.add_argument("--skip-unreadable", action="store_true", help="skip and count unreadable images")
    parser.add_argument("--workers", type=int, help="decoding processes (default: the CPU cores available)")


def cmd_prepare(args) -> None:
    from p2core import prepare

    if args.embedded:
        meta = prepare.prepare_embedded(args.embedded, args.out, args.resolution)
    else:
        meta = prepare.prepare_folder(
            args.source,
            args.out,
            args.resolution,
            args.name or Path(args.source).stem,
            args.flip,
            args.skip_unreadable,
            workers=args.workers,
        )
    print(json.dumps({k: meta[k] for k in ("count", "resolution", "channels", "flip")}))


def args_train(parser) -> None:
    parser.add_argument("--data", required=True, help="prepared dataset folder")
    parser.add_argument("--out", required=True, help="run folder (resumed if it holds checkpoint.pt)")
    parser.add_argument("--spec", required=True, help="TrainSpec as JSON/YAML text or a file path")
    # how the run executes, not what it computes (p2core.trainspec.EXECUTION_SETTINGS); default: the spec's values
    parser.add_argument("--log-every", type=int, help="updates per train.csv row (0: TrainSpec's default)")
    parser.add_argument("--save-every", type=int, help="updates per checkpoint.pt (0: TrainSpec's default)")
    parser.add_argument("--microbatch", type=int, help="images per forward/backward pass (0: all at once)")
    parser.add_argument(
        "--stop-before-limit",
        type=float,
        default=0.0,
        metavar="MIN",
        help="in a SLURM job: checkpoint MIN minutes before the job's time limit and requeue the job (0: never)",
    )
    _device_option(parser)
    _threads_option(parser)
    _progress_option(parser)


def cmd_train(args) -> None:
    import time

    from p2core.timelimit import requeue, stop_time
    from p2core.train import StoppedBeforeTimeLimit, train
    from p2core.trainspec import TrainSpec, load_spec, with_execution

    _set_threads(args.threads)
    values = with_execution(
        load_spec(args.spec), log_every=args.log_every, save_every=args.save_every, microbatch=args.microbatch
    )
    spec = TrainSpec.from_dict(values)
    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        final = train(spec, args.data, args.out, args.device, not args.no_progress, stop_time(args.stop_before_limit))
    except StoppedBeforeTimeLimit as stopped:
        if main_rank and not requeue():
            raise  # no requeue here: the scheduler's retry resumes the run
        print(f"{stopped}: job requeued, waiting for SLURM to stop this segment", flush=True)
        time.sleep(600)  # SLURM ends the job within seconds
        raise
    if main_rank:
        print(f"wrote {final}")


def args_import(parser) -> None:
    parser.add_argument("--source", required=True, help="a guided-diffusion state dict (the authors' released .pt)")
    parser.add_argument("--data", required=True, help="prepared dataset folder (the model's image size and channels)")
    parser.add_argument("--out", required=True, help="run folder: ema.pt and run.json are written there")
    parser.add_argument("--spec", required=True, help="model flags, diffusion settings and seed as JSON/YAML or a file")


def cmd_import(args) -> None:
    from p2core.importing import import_model
    from p2core.trainspec import load_spec

    print(f"wrote {import_model(args.source, args.data, args.out, load_spec(args.spec))}")


def args_sample(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="ema.pt, ema_step{N}.pt or checkpoint.pt")
    parser.add_argument("--sampler", default="ddpm250", help="ddpm250, ddim25, dpmpp2m20, ddpm10,10,10, ...")
    parser.add_argument("--num", type=int, required=True, help="number of images")
    parser.add_argument(
        "--start", type=int, default=0, help="number of the first image: draws images START..START+NUM-1 of the set"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="auto: bf16 where native")
    parser.add_argument("--out", required=True, help="output shard .npz (uint8 NHWC, key arr_0, and first_index)")
    parser.add_argument(
        "--channels-last", type=_layout, default="auto", help="memory layout: auto (measured faster here), true, false"
    )
    _device_option(parser)
    _threads_option(parser)
    _progress_option(parser)


def cmd_sample(args) -> None:
    from p2core.sample import draw_shard

    _set_threads(args.threads)
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
        channels_last=args.channels_last,
    )
    print(f"wrote images {args.start}..{args.start + len(images) - 1} to {args.out}")


def args_grid(parser) -> None:
    parser.add_argument("samples", nargs="+", help="the set's shard .npz files")
    parser.add_argument("--out", required=True, help="PNG")
    parser.add_argument("--count", type=int, default=64, help="images in the grid")
    parser.add_argument("--scale", type=int, default=1, help="nearest-neighbour upscaling")


def cmd_grid(args) -> None:
    from p2core.grids import save_sample_grid

    save_sample_grid(args.samples, args.out, args.count, args.scale)


def args_train_features(parser) -> None:
    parser.add_argument("--data", required=True, help="prepared, labelled dataset folder")
    parser.add_argument("--out", required=True, help="output checkpoint (.pt)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: p2core.features.EPOCHS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-accuracy", type=float, default=0.97, help="fail below this held-out accuracy")
    _progress_option(parser)


def cmd_train_features(args) -> None:
    from p2core.data import load_prepared
    from p2core.features import EPOCHS, train_domain_classifier

    data = load_prepared(args.data)
    result = train_domain_classifier(
        data.images,
        data.labels,
        args.out,
        epochs=args.epochs or EPOCHS,
        seed=args.seed,
        min_accuracy=args.min_accuracy,
        progress=not args.no_progress,
    )
    print(json.dumps(result))


def args_reference(parser) -> None:
    parser.add_argument("--backend", default=TORCH_FIDELITY, choices=BACKENDS)
    parser.add_argument(
        "--published", help="clean-fid: use its published statistics NAME,RESOLUTION,SPLIT (ffhq,256,trainval70k)"
    )
    parser.add_argument("--data", required=True, help="prepared dataset folder")
    parser.add_argument(
        "--extractor",
        default=INCEPTION,
        choices=EXTRACTORS,
        help="torch-fidelity's extractor (clean-fid always uses its TorchScript Inception)",
    )
    parser.add_argument("--domain-weights", help="domain feature network checkpoint (extractor 'domain')")
    _weights_options(parser)
    parser.add_argument(
        "--floor-size",
        type=int,
        default=10_000,
        help="real images held out for the real-vs-real noise floor (use the sample count)",
    )
    parser.add_argument("--kid-subset-size", default="auto", help="integer or auto: min(1000, smaller set)")
    parser.add_argument("--out", required=True, help="statistics .npz")
    _device_option(parser)
    _threads_option(parser)
    _progress_option(parser)


def cmd_reference(args) -> None:
    from p2core.metrics import write_reference

    _set_threads(args.threads)
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
        published=args.published,
    )
    print(json.dumps({k: info[k] for k in ("backend", "extractor", "n_reference", "weights_verified", "noise_floor")}))


def args_evaluate(parser) -> None:
    parser.add_argument("--samples", required=True, nargs="+", help="the sample set's shard .npz files")
    parser.add_argument(
        "--reference", required=True, nargs="+", help="statistics .npz files from `p2core reference`, one per backend"
    )
    parser.add_argument("--kid-subset-size", default="auto", help="integer or auto: min(1000, smaller set)")
    parser.add_argument("--bootstrap", type=int, default=100, help="resamples for the FID interval (0: none)")
    parser.add_argument("--tag", action="append", default=[], help="KEY=VALUE recorded in the JSON (repeatable)")
    parser.add_argument("--out", required=True, help="metrics JSON")
    _device_option(parser)
    _threads_option(parser)
    _progress_option(parser)


def cmd_evaluate(args) -> None:
    from p2core.metrics import evaluate_samples, parse_tags

    _set_threads(args.threads)
    result = evaluate_samples(
        args.samples,
        args.reference,
        args.out,
        args.kid_subset_size,
        args.bootstrap,
        args.device,
        tags=parse_tags(args.tag),
        progress=not args.no_progress,
    )
    shown = ("backend", "extractor", "fid", "kid_mean", "weights_verified")
    print(json.dumps([{k: b[k] for k in shown} for b in result["backends"]]))


def args_distance_vs_snr(parser) -> None:
    parser.add_argument("--data", required=True)
    parser.add_argument("--distance", required=True, choices=DISTANCES)
    parser.add_argument("--domain-weights", help="domain feature network (distance 'domain')")
    _weights_options(parser)
    parser.add_argument("--schedule", default="linear")
    parser.add_argument("--num-timesteps", type=int, default=1000)
    parser.add_argument("--points", type=int, default=25, help="number of timesteps evaluated")
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="CSV")
    _threads_option(parser, default=1)


def cmd_distance_vs_snr(args) -> None:
    from p2core.analysis import write_distance_vs_snr

    _set_threads(args.threads)
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


def args_reconstruct(parser) -> None:
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help=".npz")
    _device_option(parser)


def cmd_reconstruct(args) -> None:
    from p2core.analysis import write_reconstructions

    write_reconstructions(args.checkpoint, args.data, args.out, args.num_images, args.points, args.seed, args.device)


def args_figure(parser) -> None:
    parser.add_argument("which", help="a figure of p2core.plots.FIGURES (an unknown name lists them)")
    parser.add_argument("inputs", nargs="*", help="input files (samples: LABEL=SHARD.npz; curves: LABEL=train.csv)")
    parser.add_argument("--out", required=True, help="PNG path; the PDF goes beside it")
    parser.add_argument("--title")
    parser.add_argument("--num-timesteps", type=int, default=1000, help="fig3")
    parser.add_argument(
        "--weightings",
        default='{"baseline": ["uniform", {}], "p2": ["p2", {"gamma": 1.0, "k": 1.0}]}',
        help="fig3: JSON {label: [weighting, params]}",
    )
    parser.add_argument("--grid-count", type=int, default=36, help="samples: images per panel")


def cmd_figure(args) -> None:
    from p2core.plots import FigureOptions, draw

    options = FigureOptions(args.title, args.num_timesteps, json.loads(args.weightings), args.grid_count)
    draw(args.which, args.inputs, args.out, options)


def args_table(parser) -> None:
    parser.add_argument("which", help="a table of p2core.tables.TABLES (an unknown name lists them)")
    parser.add_argument("inputs", nargs="+", help="metrics JSON files (table2: the table1 CSV; summary: table CSVs)")
    parser.add_argument("--literature", help="table2: CSV of published numbers (model, dataset, fid, source)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--markdown", help="also write a Markdown rendering here")


def cmd_table(args) -> None:
    from p2core.tables import write_table

    write_table(args.which, args.inputs, args.out, args.literature, args.markdown)


def args_tex(parser) -> None:
    parser.add_argument("tables", nargs="+", help="table CSVs (results/table1.csv, ...): each becomes table<N>.tex")
    parser.add_argument("--out-dir", required=True, help="where table<N>.tex and numbers.tex go")


def cmd_tex(args) -> None:
    from p2core.tex import write_tex

    for path in write_tex(args.tables, args.out_dir):
        print(f"wrote {path}")


def args_runs(parser) -> None:
    parser.add_argument("folders", nargs="*", default=["results"], help="run folders, or folders searched for them")
    parser.add_argument("--json", action="store_true", help="a JSON list instead of the table")
    parser.add_argument("--csv", help="also write the table with provenance columns (commit, device, ...) as CSV here")


def cmd_runs(args) -> None:
    from p2core.runs import report_runs

    print(report_runs(args.folders, args.csv, as_json=args.json))


def args_prefetch(parser) -> None:
    parser.add_argument("--weights-dir", default=str(DEFAULT_WEIGHTS_DIR))


def cmd_prefetch(args) -> None:
    from p2core.weights import prefetch

    for path in prefetch(args.weights_dir):
        print(f"ready: {path}")


def args_cost(parser) -> None:
    parser.add_argument("--configfile", type=Path, help="the config to plan (default: the workflow's own)")
    parser.add_argument("--snakefile", type=Path, default=Path("workflow/Snakefile"))
    parser.add_argument("--tflops", type=float, default=40.0, help="assumed sustained TFLOP/s of one GPU")


def cmd_cost(args) -> None:
    from p2core.pipeline.cost import cost_rows, format_cost, planned_jobs

    if not args.snakefile.is_file():
        raise P2Error(f"no Snakefile at {args.snakefile}: run from the p2-repro checkout or pass --snakefile")
    jobs, config = planned_jobs(args.snakefile, args.configfile)
    print(format_cost(cost_rows(jobs, config, args.tflops), args.tflops))


COMMANDS = {
    "prepare": "prepare a dataset into images.npy + meta.json",
    "train": "train or resume a diffusion model",
    "import": "a model trained elsewhere (the authors' released .pt) as a run folder",
    "sample": "draw samples from a checkpoint's EMA weights",
    "grid": "a PNG grid of the first images of a sample set",
    "train-features": "train the domain feature network on a labelled dataset",
    "reference": "reference statistics of a prepared dataset for FID/KID",
    "evaluate": "FID and KID of samples against reference statistics",
    "distance-vs-snr": "Figure 1 data: perceptual distance of noisy pairs vs SNR",
    "reconstruct": "Figure 2 data: x0_hat predicted from x_t at several t",
    "figure": "draw a figure (PNG + PDF)",
    "table": "build a table CSV from metrics JSON files",
    "tex": "the tables as LaTeX (booktabs) and numbers.tex, one macro per number",
    "runs": "one line per training run: step, loss, img/s, ETA, state",
    "prefetch": "download the metric weights and clean-fid's FFHQ statistics (run with internet)",
    "cost": "a config's planned jobs, GPU-hours and disk per rule, before anything runs",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``only`` the options of that command alone (the others listed): a step
    runs its own ``args_*`` and no other command's."""
    parser = argparse.ArgumentParser(prog="p2core", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        stem = name.replace("-", "_")
        command = commands.add_parser(name, help=help_text)
        if only in (None, name):
            globals()[f"args_{stem}"](command)
        command.set_defaults(run=globals()[f"cmd_{stem}"])
    return parser


def main(argv: list[str] | None = None) -> int:
    trace.start_if_requested()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(next((word for word in argv if not word.startswith("-")), None)).parse_args(argv)
    try:
        provenance.set_step(args.command, argv)
        args.run(args)
    except P2Error as exc:
        print(f"p2core {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        provenance.end_step()  # a library call made after main() returns is not this command's step
    return 0


if __name__ == "__main__":
    sys.exit(main())
