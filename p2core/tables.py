"""pandas tables from metrics JSON files (``p2core evaluate`` output, whose ``tags`` say what was evaluated)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from p2core import provenance
from p2core.atomic import atomic_write_text
from p2core.respace import parse_sampler, sampler_steps

LITERATURE_COLUMNS = ("model", "dataset", "fid", "source")


def collect(paths: list[str | Path]) -> pd.DataFrame:
    """One row per metrics JSON: its tags (dataset, objective, arch, seed, checkpoint, sampler, ...) and values."""
    rows = []
    for path in paths:
        content = json.loads(Path(path).read_text())
        rows.append({**content.get("tags", {}), **{k: v for k, v in content.items() if k != "tags"}})
    return pd.DataFrame(rows)


def _summary(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """FID and KID mean, std over seeds, the seed count and the provenance columns, per group."""
    grouped = table.groupby(by, sort=False)
    out = grouped.agg(
        fid_mean=("fid", "mean"),
        fid_std=("fid", "std"),
        kid_mean=("kid_mean", "mean"),
        kid_std=("kid_mean", "std"),
        seeds=("seed", "nunique"),
        extractor=("extractor", "first"),
        n_generated=("n_generated", "first"),
        n_reference=("n_reference", "first"),
    ).reset_index()
    for column in ("training_steps", "sampler"):
        if column in table:
            out[column] = grouped[column].first().values
    return out


def table1(metrics: pd.DataFrame) -> pd.DataFrame:
    """Table 1: FID and KID per dataset and objective (mean and std over seeds), with the P2-minus-baseline gap."""
    out = _summary(metrics, ["dataset", "objective"])
    return _with_gain(out, ["dataset"])


def table3(metrics: pd.DataFrame) -> pd.DataFrame:
    """Table 3: configuration ablations, one row per (arch, objective)."""
    return _with_gain(_summary(metrics, ["dataset", "arch", "arch_label", "objective"]), ["dataset", "arch"])


def table4(metrics: pd.DataFrame) -> pd.DataFrame:
    """Table 4 / Figure 7 data: FID per sampler (with its number of steps and kind) and objective."""
    out = _summary(metrics, ["dataset", "sampler", "objective"])
    kinds_steps = [
        _sampler_steps(s, num_timesteps)
        for s, num_timesteps in zip(
            out["sampler"],
            metrics.groupby(["dataset", "sampler", "objective"], sort=False)["num_timesteps"].first(),
            strict=True,
        )
    ]
    out.insert(2, "kind", [k for k, _ in kinds_steps])
    out.insert(3, "steps", [n for _, n in kinds_steps])
    return _with_gain(out.sort_values(["dataset", "kind", "steps", "objective"]), ["dataset", "sampler"])


def fid_during_training(metrics: pd.DataFrame) -> pd.DataFrame:
    """Figure 4 data: one row per (objective, seed, step)."""
    return metrics[["dataset", "objective", "seed", "step", "fid", "kid_mean", "extractor"]].sort_values(
        ["objective", "seed", "step"]
    )


def table2(ours: pd.DataFrame, literature: pd.DataFrame | None) -> pd.DataFrame:
    """Table 2: our FID beside published numbers the user supplied (``model, dataset, fid, source``)."""
    mine = ours.assign(model=lambda d: "ours: " + d["objective"], fid=ours["fid_mean"], source="this pipeline")
    mine = mine[["model", "dataset", "fid", "fid_std", "extractor", "source"]]
    if literature is None or literature.empty:
        return mine.reset_index(drop=True)
    missing = set(LITERATURE_COLUMNS) - set(literature.columns)
    if missing:
        raise ValueError(f"literature CSV lacks columns {sorted(missing)}; needs {', '.join(LITERATURE_COLUMNS)}")
    return pd.concat([literature[list(LITERATURE_COLUMNS)], mine], ignore_index=True)


def _sampler_steps(sampler: str, num_timesteps: int) -> tuple[str, int]:
    return parse_sampler(sampler)[0], sampler_steps(sampler, int(num_timesteps))


def _with_gain(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Add ``fid_gain_vs_baseline``: baseline FID minus this row's (positive = better than baseline)."""
    if "baseline" not in set(table["objective"]):
        return table
    baseline = table[table["objective"] == "baseline"].set_index(keys)["fid_mean"]
    gains = [
        baseline.get(tuple(row[k] for k in keys) if len(keys) > 1 else row[keys[0]], float("nan")) - row["fid_mean"]
        for _, row in table.iterrows()
    ]
    return table.assign(fid_gain_vs_baseline=gains)


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A plain Markdown rendering (no extra dependency)."""

    def cell(value):
        return f"{value:.{digits}g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def figure7_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """Figure 7's points: every metrics row with its sampler's ``kind`` (ddpm/ddim) and number of ``steps``."""
    sweep = table4(metrics)[["sampler", "kind", "steps"]].drop_duplicates()
    return metrics.merge(sweep, on="sampler")


TABLES = ("table1", "table2", "table3", "table4")


def write_table(
    which: str,
    inputs: list[str | Path],
    out: str | Path,
    literature: str | Path | None = None,
    markdown: str | Path | None = None,
) -> pd.DataFrame:
    """Build table ``which`` from metrics JSON files (``table2``: from the Table 1 CSV and an optional literature
    CSV) and write it as CSV to ``out`` (and as Markdown to ``markdown``)."""
    if which == "table2":
        table = table2(pd.read_csv(inputs[0]), pd.read_csv(literature) if literature else None)
    elif which in TABLES:
        table = globals()[which](collect(inputs))
    else:
        raise ValueError(f"unknown table {which!r}; choose one of {', '.join(TABLES)}")
    atomic_write_text(out, table.to_csv(index=False))
    aggregates = {"aggregates": [_source(path) for path in ([*inputs, literature] if literature else inputs)]}
    provenance.write_sidecar(out, aggregates)
    if markdown:
        atomic_write_text(markdown, to_markdown(table))
        provenance.write_sidecar(markdown, aggregates)
    return table


def _source(path: str | Path) -> dict:
    """What a table row came from: the file, its tags (run and sampler) and where it was computed."""
    path = Path(path)
    content = json.loads(path.read_text()) if path.suffix == ".json" else {}
    origin = provenance.read(path)
    return {
        "file": str(path),
        "tags": content.get("tags", {}),
        **{key: origin.get(key, "unknown") for key in ("git_commit", "git_dirty", "host", "device")},
        "code_fingerprint": origin.get("step", {}).get("code_fingerprint", "unknown"),
    }
