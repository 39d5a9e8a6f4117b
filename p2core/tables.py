"""pandas tables from metrics JSON files (``p2core evaluate`` output, whose ``tags`` say what was evaluated)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import scipy.stats

from p2core import provenance
from p2core.atomic import atomic_write_text
from p2core.backends import BACKENDS, column_prefix
from p2core.errors import P2Error
from p2core.respace import parse_sampler, sampler_steps

LITERATURE_COLUMNS = ("model", "dataset", "fid", "source")
#: the ``interval`` of a row whose dataset has no baseline model (e.g. no released CelebA-HQ baseline)
NO_BASELINE = "no baseline model"


def collect(paths: list[str | Path]) -> pd.DataFrame:
    """One row per metrics JSON: its tags (dataset, objective, arch, seed, checkpoint, sampler, ...) and values
    (the noise floor flattened to ``noise_floor_fid``, ``noise_floor_kid_mean``, ...; every backend's FID and KID as
    ``clean_fid_fid``, ``torch_fidelity_kid``, ...)."""
    rows = []
    for path in paths:
        content = json.loads(Path(path).read_text())
        floor = content.get("noise_floor") or {}
        per_backend = {
            f"{column_prefix(b['backend_name'])}_{metric}": b[key]
            for b in content.get("backends", [])
            for metric, key in (("fid", "fid"), ("kid", "kid_mean"))
        }
        rows.append(
            {
                **content.get("tags", {}),
                **{k: v for k, v in content.items() if k not in ("tags", "noise_floor", "backends")},
                **{f"noise_floor_{k}": v for k, v in floor.items()},
                **per_backend,
            }
        )
    return pd.DataFrame(rows)


def _summary(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """FID and KID mean, std over seeds, the seed count, the real-vs-real noise floor and how the numbers were computed
    (extractor, backend, weights verified, comparable to Inception FID), per group; with several backends also each
    one's FID and KID mean (``clean_fid_fid_mean``, ``torch_fidelity_fid_mean``, ...)."""
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
    for column in ("prc_precision", "prc_recall", "recognisable"):  # sample quality beside FID (mean over seeds)
        if column in table and table[column].notna().any():
            out[f"{column}_mean"] = grouped[column].mean().values
    for column in ("noise_floor_prc_precision", "noise_floor_prc_recall", "reference_recognisable"):  # ceilings
        if column in table and table[column].notna().any():
            out[column] = grouped[column].first().values
    for column in ("noise_floor_fid", "backend", "weights_verified", "comparable_to_inception"):
        if column in table:
            out[column] = grouped[column].first().values
    backends = [column_prefix(name) for name in BACKENDS if f"{column_prefix(name)}_fid" in table]
    if len(backends) > 1:  # several backends: each one's mean over seeds
        for column in (f"{prefix}_{metric}" for prefix in backends for metric in ("fid", "kid")):
            out[f"{column}_mean"] = grouped[column].mean().values
    for column in ("training_steps", "sampler", "model_source"):
        if column in table:
            out[column] = grouped[column].first().values
    if "precision" in table:  # the sample sets' precision (each set has one; seeds could differ)
        out["precision"] = grouped["precision"].agg(lambda values: "/".join(sorted(set(map(str, values))))).values
    return out


def table1(metrics: pd.DataFrame) -> pd.DataFrame:
    """Table 1: FID and KID per dataset and objective (mean and std over seeds), with the difference to the baseline
    and its 95% interval over seeds."""
    out = _summary(metrics, ["dataset", "objective"])
    return _with_difference(out, metrics, ["dataset"])


def table3(metrics: pd.DataFrame) -> pd.DataFrame:
    """Table 3: configuration ablations, one row per (arch, objective)."""
    return _with_difference(
        _summary(metrics, ["dataset", "arch", "arch_label", "objective"]), metrics, ["dataset", "arch", "arch_label"]
    )


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
    return _with_difference(out.sort_values(["dataset", "kind", "steps", "objective"]), metrics, ["dataset", "sampler"])


def table5(metrics: pd.DataFrame) -> pd.DataFrame:
    """Table 5, the weighting study: FID and KID per objective (one weighting or timestep draw each) on one dataset,
    arch and sampler, with the difference to the baseline (``fid_diff``, ...) and to P2 (``fid_diff_vs_p2``, ...) and
    their 95% intervals, and the ``weighting`` each objective trains with (and its draw of t), best FID first."""
    out = _summary(metrics, ["dataset", "objective"])
    if "weighting" in metrics:
        out.insert(2, "weighting", metrics.groupby(["dataset", "objective"], sort=False)["weighting"].first().values)
    out = _with_difference(out, metrics, ["dataset"])
    out = _with_difference(out, metrics, ["dataset"], reference="p2", suffix="_vs_p2")
    return out.sort_values(["dataset", "fid_mean"], kind="stable").reset_index(drop=True)


def fid_during_training(metrics: pd.DataFrame) -> pd.DataFrame:
    """Figure 4 data: one row per (objective, seed, step)."""
    return metrics[["dataset", "objective", "seed", "step", "fid", "kid_mean", "extractor"]].sort_values(
        ["objective", "seed", "step"]
    )


def table2(ours: pd.DataFrame, literature: pd.DataFrame | None) -> pd.DataFrame:
    """Table 2: our FID beside published numbers the user supplied (``model, dataset, fid, source``); our rows say
    how they were computed (extractor, backend, ``comparable_to_inception``: verified Inception weights)."""
    mine = ours.assign(model=lambda d: "ours: " + d["objective"], fid=ours["fid_mean"], source="this pipeline")
    how = [c for c in ("extractor", "backend", "comparable_to_inception", "model_source") if c in mine]
    mine = mine[["model", "dataset", "fid", "fid_std", *how, "source"]]
    if literature is None or literature.empty:
        return mine.reset_index(drop=True)
    missing = set(LITERATURE_COLUMNS) - set(literature.columns)
    if missing:
        raise ValueError(f"literature CSV lacks columns {sorted(missing)}; needs {', '.join(LITERATURE_COLUMNS)}")
    return pd.concat([literature[list(LITERATURE_COLUMNS)], mine], ignore_index=True)


def _sampler_steps(sampler: str, num_timesteps: int) -> tuple[str, int]:
    return parse_sampler(sampler)[0], sampler_steps(sampler, int(num_timesteps))


def welch_interval(values: np.ndarray, reference: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Difference of means ``mean(values) - mean(reference)`` and its Welch t interval at ``level``.

    Both need at least two values (seeds); equal values on both sides give a zero-width interval.
    """
    values, reference = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    difference = float(values.mean() - reference.mean())
    var_a, var_b = values.var(ddof=1) / len(values), reference.var(ddof=1) / len(reference)
    if var_a + var_b == 0:
        return difference, difference, difference
    dof = (var_a + var_b) ** 2 / (var_a**2 / (len(values) - 1) + var_b**2 / (len(reference) - 1))
    half = float(scipy.stats.t.ppf(0.5 + level / 2, dof) * np.sqrt(var_a + var_b))
    return difference, difference - half, difference + half


def bootstrap_interval(mine: pd.DataFrame, base: pd.DataFrame, level: float = 0.95):
    """FID difference (one metrics row per side) and its percentile interval over the paired bootstrap replicates
    (``fid_bootstrap``: the same resampled image numbers on both sides, whose images share their noise); None when
    either row has no replicates or they differ in count."""
    if len(mine) != 1 or len(base) != 1 or "fid_bootstrap" not in mine or "fid_bootstrap" not in base:
        return None
    a, b = mine.iloc[0]["fid_bootstrap"], base.iloc[0]["fid_bootstrap"]
    if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b) or len(a) < 2:
        return None
    replicates = np.asarray(a) - np.asarray(b)
    tail = 100 * (1 - level) / 2
    difference = float(mine.iloc[0]["fid"] - base.iloc[0]["fid"])
    return difference, float(np.percentile(replicates, tail)), float(np.percentile(replicates, 100 - tail))


def _with_difference(
    table: pd.DataFrame, metrics: pd.DataFrame, keys: list[str], reference: str = "baseline", suffix: str = ""
) -> pd.DataFrame:
    """Add, per row, the difference to the ``reference`` objective's row with the same ``keys`` (negative = lower
    than it) for FID and KID, with its 95% interval and the method in ``interval``: Welch t over seeds with two or
    more seeds on each side; with one, a paired bootstrap over samples for FID (:func:`bootstrap_interval`) and none
    for KID. Columns ``fid_diff``, ``fid_diff_low95``, ``fid_diff_high95``, ``kid_diff``, ..., ``interval``, with
    ``suffix`` after ``diff`` and ``interval``: ``fid_diff_vs_p2``, ``fid_diff_vs_p2_low95``, ``interval_vs_p2``."""
    if reference not in set(table["objective"]):
        return table
    groups = {name: rows for name, rows in metrics.groupby([*keys, "objective"], sort=False)}
    diff, interval = f"_diff{suffix}", f"interval{suffix}"
    columns = {f"{m}{diff}{end}": [] for m in ("fid", "kid") for end in ("", "_low95", "_high95")} | {interval: []}
    for _, row in table.iterrows():
        key = tuple(row[k] for k in keys)
        mine, base = groups[(*key, row["objective"])], groups.get((*key, reference))
        if row["objective"] == reference or base is None:
            method = "reference" if base is not None else NO_BASELINE if reference == "baseline" else f"no {reference}"
            results = [(np.nan,) * 3] * 2
        elif min(len(mine), len(base)) < 2:
            kid = (mine["kid_mean"].mean() - base["kid_mean"].mean(), np.nan, np.nan)
            fid = bootstrap_interval(mine, base)
            if fid is None:
                method = f"none: {len(mine)} vs {len(base)} seeds (an interval needs 2 or more on each side)"
                fid = (mine["fid"].mean() - base["fid"].mean(), np.nan, np.nan)
            else:
                method = (
                    f"FID: 95% paired bootstrap over samples ({len(mine.iloc[0]['fid_bootstrap'])} resamples, "
                    "one seed per side); KID: none"
                )
            results = [fid, kid]
        else:
            method = f"95% Welch t over seeds ({len(mine)} vs {len(base)})"
            results = [welch_interval(mine[m].to_numpy(), base[m].to_numpy()) for m in ("fid", "kid_mean")]
        for prefix, (difference, low, high) in zip(("fid", "kid"), results, strict=True):
            columns[f"{prefix}{diff}"].append(difference)
            columns[f"{prefix}{diff}_low95"].append(low)
            columns[f"{prefix}{diff}_high95"].append(high)
        columns[interval].append(method)
    return table.assign(**columns)


#: a table's identifying columns as a reader names them, in the order the Markdown view shows them
PEOPLE_KEYS = {"dataset": "dataset", "arch_label": "setting", "sampler": "sampler", "objective": "objective"}
#: columns of the people view that, when every row holds the same value, are said once above the table instead
SHARED_LABELS = ("dataset", "setting", "sampler", "seeds", "numbers in", "model")


def for_people(table: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader needs, as text: what the row is, FID and KID mean ± std over seeds, the sample quality
    (recognisable fraction, precision / recall), the difference to the baseline with its 95% interval and verdict,
    the seed count, the numerical precision and where the model came from. The CSV keeps every column; a missing
    value is a dash, never ``nan`` or ``None``."""
    view = pd.DataFrame({label: table[column] for column, label in PEOPLE_KEYS.items() if column in table})
    view["FID"] = [_mean_std(m, sd) for m, sd in zip(table["fid_mean"], table["fid_std"], strict=True)]
    view["KID"] = [_mean_std(m, sd) for m, sd in zip(table["kid_mean"], table["kid_std"], strict=True)]
    if "recognisable_mean" in table:
        view["recognisable"] = [_number(v, ".2f") for v in table["recognisable_mean"]]
    if "prc_precision_mean" in table:
        pairs = zip(table["prc_precision_mean"], table["prc_recall_mean"], strict=True)
        view["precision / recall"] = [f"{_number(p, '.2f')} / {_number(r, '.2f')}" for p, r in pairs]
    if "fid_diff" in table:
        view["FID vs baseline [95%]"] = [_difference(row) for _, row in table.iterrows()]
        view["verdict"] = [
            verdict(row["fid_diff_low95"], row["fid_diff_high95"]) if pd.notna(row["fid_diff_low95"]) else "-"
            for _, row in table.iterrows()
        ]
    for column, label in (("seeds", "seeds"), ("precision", "numbers in"), ("model_source", "model")):
        if column in table:
            view[label] = [_number(v, "") for v in table[column]]
    return view


def people_markdown(table: pd.DataFrame) -> str:
    """:func:`for_people` as Markdown, with the columns of :data:`SHARED_LABELS` that hold one value in every row
    said once in a line above the table (``dataset digits · sampler dpmpp2m10 · seeds 3 · ...``), so that the table
    shows only what differs between its rows."""
    view = for_people(table)
    shared = [label for label in SHARED_LABELS if label in view and len(view) and view[label].nunique() == 1]
    line = " · ".join(f"{label} {view[label].iloc[0]}" for label in shared)
    return (f"Every row: {line}\n\n" if line else "") + to_markdown(view.drop(columns=shared))


def _number(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not np.isfinite(value)) else format(value, spec)


def _mean_std(mean: float, std: float) -> str:
    return _number(mean, ".4g") + (f" ± {std:.2g}" if pd.notna(std) else "")


def _difference(row: pd.Series) -> str:
    """``-2.25 [-4.09, -0.41]``, or what stands in its place (``reference`` for the baseline row)."""
    if pd.isna(row["fid_diff"]):
        return str(row.get("interval", "-")) if pd.notna(row.get("interval")) else "-"
    low, high = row["fid_diff_low95"], row["fid_diff_high95"]
    interval = f" [{low:.3g}, {high:.3g}]" if pd.notna(low) else ""
    return f"{row['fid_diff']:+.3g}{interval}"


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


TableFn = Callable[[list[str | Path], str | Path, str | Path | None, str | Path | None], pd.DataFrame]
TABLES: dict[str, TableFn] = {}


def register(name: str) -> Callable[[TableFn], TableFn]:
    """Add a table to the registry under ``name``: ``(inputs, out, literature, markdown) -> table`` writes it."""

    def add(fn: TableFn) -> TableFn:
        TABLES[name] = fn
        return fn

    return add


def write_table(
    which: str,
    inputs: list[str | Path],
    out: str | Path,
    literature: str | Path | None = None,
    markdown: str | Path | None = None,
) -> pd.DataFrame:
    """Build table ``which`` (a name in :data:`TABLES`) from metrics JSON files (``table2``: from the Table 1 CSV and
    an optional literature CSV) and write it as CSV to ``out`` (and as Markdown to ``markdown``). ``summary``: the
    claims (:func:`claims`) that the given table CSVs (``table1.csv``, ...) and final-checkpoint metrics JSON
    (Figure 4's runs) test, as Markdown to ``out``."""
    if which not in TABLES:
        raise P2Error(f"unknown table {which!r}; choose one of {', '.join(TABLES)}")
    return TABLES[which](list(inputs), out, literature, markdown)


def _write(
    table: pd.DataFrame,
    sources: list,
    out: str | Path,
    markdown: str | Path | None,
    render: Callable[[pd.DataFrame], str] = to_markdown,
) -> pd.DataFrame:
    """A table as CSV (every column) and Markdown (``render`` of it, e.g. :func:`people_markdown`; else every
    column), each with a provenance sidecar listing the files it aggregates."""
    atomic_write_text(out, table.to_csv(index=False))
    aggregates = {"aggregates": [_source(path) for path in sources]}
    provenance.write_sidecar(out, aggregates)
    if markdown:
        atomic_write_text(markdown, render(table))
        provenance.write_sidecar(markdown, aggregates)
    return table


@register("table1")
def _table1(inputs, out, literature, markdown) -> pd.DataFrame:
    return _write(table1(collect(inputs)), inputs, out, markdown, people_markdown)


@register("table2")
def _table2(inputs, out, literature, markdown) -> pd.DataFrame:
    table = table2(pd.read_csv(inputs[0]), pd.read_csv(literature) if literature else None)
    return _write(table, [*inputs, literature] if literature else inputs, out, markdown)


@register("table3")
def _table3(inputs, out, literature, markdown) -> pd.DataFrame:
    return _write(table3(collect(inputs)), inputs, out, markdown, people_markdown)


@register("table4")
def _table4(inputs, out, literature, markdown) -> pd.DataFrame:
    return _write(table4(collect(inputs)), inputs, out, markdown, people_markdown)


@register("table5")
def _table5(inputs, out, literature, markdown) -> pd.DataFrame:
    return _write(table5(collect(inputs)), inputs, out, markdown, people_markdown)


@register("summary")
def _summary_claims(inputs, out, literature, markdown) -> pd.DataFrame:
    tables = {Path(path).stem: pd.read_csv(path) for path in inputs if Path(path).suffix == ".csv"}
    training = [path for path in inputs if Path(path).suffix == ".json"]
    table = claims(tables, collect(training) if training else None)
    reach = None
    if "table4" in tables and "table1" in tables:  # the fast samplers against the sampler of Table 1
        reach = evaluations_to_reach(tables["table4"], str(tables["table1"]["sampler"].iloc[0]))
    atomic_write_text(out, summary_markdown(table, reach, tables.get("table5"), tables.get("table1")))
    provenance.write_sidecar(out, {"aggregates": [str(path) for path in inputs]})
    return table


def _source(path: str | Path) -> dict:
    """What a table row came from: the file, its tags (run and sampler) and where it was computed."""
    path = Path(path)
    content = json.loads(path.read_text()) if path.suffix == ".json" else {}
    origin = content["provenance"] if "provenance" in content else provenance.read(path)
    return {
        "file": str(path),
        "tags": content.get("tags", {}),
        **{key: origin.get(key, "unknown") for key in ("git_commit", "git_dirty", "host", "device")},
        "code_fingerprint": origin.get("step", {}).get("code_fingerprint", "unknown"),
    }


CLAIM_TABLES = {"table1": ("dataset",), "table3": ("arch_label",), "table4": ("sampler",)}


def verdict(low: float, high: float) -> str:
    """``supported`` when the whole interval is below 0, ``not supported`` above 0, else (or none) ``inconclusive``."""
    return "supported" if high < 0 else "not supported" if low > 0 else "inconclusive"


def claims(tables: dict[str, pd.DataFrame], training: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's claims that the given tables test, each with the measured effect and a verdict.

    Every non-baseline row of Table 1 (per dataset, FID and KID), Table 3 (per architecture) and Table 4 (per
    sampler) tests "this objective lowers the metric against the baseline": ``supported`` when the whole 95% interval
    of the difference is below 0, ``not supported`` when it is above 0, ``inconclusive`` when it contains 0 or there
    is no interval; ``not tested`` where the dataset has no baseline model. Table 5 tests every other weighting
    against the baseline and against P2 (:func:`_weighting_study`). With two or more datasets in Table 1,
    "the gain is largest on the smallest dataset" (:func:`_largest_on_smallest`); with Figure 4's final-checkpoint
    metrics (``training``), "cosine is worse than linear" per objective (:func:`_cosine_worse`).
    """
    rows = []
    for name, table in tables.items():
        if "interval" not in table or name not in CLAIM_TABLES:  # Table 5: _weighting_study
            continue
        for _, row in table[table["objective"] != "baseline"].iterrows():
            where = ", ".join(f"{row[k]}" for k in CLAIM_TABLES[name])
            metrics = ("fid", "kid") if name == "table1" else ("fid",)
            for metric in metrics:
                low, high = row[f"{metric}_diff_low95"], row[f"{metric}_diff_high95"]
                judged = "not tested" if row["interval"] == NO_BASELINE else verdict(low, high)
                rows.append(
                    {
                        "table": name,
                        "claim": f"{row['objective']} lowers {metric.upper()} vs baseline ({where})",
                        "difference": row[f"{metric}_diff"],
                        "low95": low,
                        "high95": high,
                        "interval": row["interval"],
                        "verdict": judged,
                    }
                )
    if "table1" in tables:
        rows += _largest_on_smallest(tables["table1"])
    if "table4" in tables:
        rows += _gain_with_few_evaluations(tables["table4"])
    if "table5" in tables:
        rows += _weighting_study(tables["table5"])
    if training is not None:
        rows += _cosine_worse(training)
    return pd.DataFrame(rows)


def _largest_on_smallest(table: pd.DataFrame) -> list[dict]:
    """ "P2's FID gain is largest on the smallest dataset" (fewest reference images), per non-baseline objective:
    the smallest dataset's difference against each other dataset's, intervals from Table 1. ``supported`` when the
    smallest dataset's interval lies wholly below every other's; ``not supported`` when another dataset's lies wholly
    below it; else ``inconclusive``. The effect is the smallest dataset's difference minus the next most negative."""
    rows = []
    compared = table[(table["objective"] != "baseline") & (table["interval"] != NO_BASELINE)]
    for objective, group in compared.groupby("objective"):
        sizes = group["n_reference"].sort_values().to_numpy()
        if group["dataset"].nunique() < 2 or sizes[0] == sizes[1]:
            continue  # one dataset, or no single smallest one
        group = group.sort_values("n_reference")
        smallest, others = group.iloc[0], group.iloc[1:]
        if (others["fid_diff_high95"] < smallest["fid_diff_low95"]).any():
            judged = "not supported"
        elif (smallest["fid_diff_high95"] < others["fid_diff_low95"]).all():
            judged = "supported"
        else:
            judged = "inconclusive"
        rows.append(
            {
                "table": "table1",
                "claim": f"{objective}'s FID gain is largest on the smallest dataset ({smallest['dataset']})",
                "difference": float(smallest["fid_diff"] - others["fid_diff"].min()),
                "low95": np.nan,
                "high95": np.nan,
                "interval": "compares the per-dataset 95% intervals of Table 1 (no joint interval)",
                "verdict": judged,
            }
        )
    return rows


def _weighting_study(table: pd.DataFrame) -> list[dict]:
    """Table 5's claims: every weighting other than the baseline and P2 "lowers FID against the baseline" and "against
    P2" (P2 against the baseline is Table 1's claim), with the verdict rule of :func:`claims`."""
    rows = []
    for _, row in table[~table["objective"].isin(["baseline", "p2"])].iterrows():
        for reference, suffix in (("baseline", ""), ("p2", "_vs_p2")):
            if f"fid_diff{suffix}" not in row or row[f"interval{suffix}"] in (NO_BASELINE, f"no {reference}"):
                continue
            low, high = row[f"fid_diff{suffix}_low95"], row[f"fid_diff{suffix}_high95"]
            rows.append(
                {
                    "table": "table5",
                    "claim": f"{row['objective']} lowers FID vs {reference} ({row['dataset']}, weighting study)",
                    "difference": row[f"fid_diff{suffix}"],
                    "low95": low,
                    "high95": high,
                    "interval": row[f"interval{suffix}"],
                    "verdict": verdict(low, high),
                }
            )
    return rows


FEW_EVALUATIONS = (10, 25)


def _gain_with_few_evaluations(table: pd.DataFrame) -> list[dict]:
    """ "The objective's FID gain holds with a fast sampler": per non-baseline objective, over Table 4's samplers with
    :data:`FEW_EVALUATIONS` (10 to 25) model evaluations per image. ``supported`` when every such sampler's interval
    lies below 0, ``not supported`` when one lies above 0, else ``inconclusive``; the effect and interval shown are
    those of the sampler with the smallest gain (the largest difference)."""
    low, high = FEW_EVALUATIONS
    rows = []
    few = table[(table["steps"] >= low) & (table["steps"] <= high) & (table["objective"] != "baseline")]
    for objective, group in few.groupby("objective"):
        if group["interval"].eq(NO_BASELINE).all():
            continue
        weakest = group.sort_values("fid_diff").iloc[-1]
        verdicts = [verdict(a, b) for a, b in zip(group["fid_diff_low95"], group["fid_diff_high95"], strict=True)]
        judged = (
            "supported"
            if all(v == "supported" for v in verdicts)
            else "not supported"
            if "not supported" in verdicts
            else "inconclusive"
        )
        rows.append(
            {
                "table": "table4",
                "claim": f"{objective}'s FID gain holds at {low}-{high} model evaluations "
                f"({', '.join(group['sampler'])}; shown: the smallest gain, {weakest['sampler']})",
                "difference": weakest["fid_diff"],
                "low95": weakest["fid_diff_low95"],
                "high95": weakest["fid_diff_high95"],
                "interval": weakest["interval"],
                "verdict": judged,
            }
        )
    return rows


def evaluations_to_reach(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per objective and sampler kind of a Table 4: the fewest model evaluations per image whose FID is at or below
    that objective's FID with sampler ``reference`` (e.g. ``ddpm250``), and the speedup over ``reference`` (every
    sampler costs one model evaluation per step; the solvers' own arithmetic is negligible next to the network).
    ``evaluations`` is empty where no tried step count reaches it (``tried`` lists them)."""
    rows = []
    for objective, group in table.groupby("objective", sort=False):
        target = group.loc[group["sampler"] == reference]
        if target.empty:
            continue
        target_fid, target_steps = float(target["fid_mean"].iloc[0]), int(target["steps"].iloc[0])
        for kind, runs in group.groupby("kind", sort=False):
            good = runs[runs["fid_mean"] <= target_fid].sort_values("steps")
            steps = int(good["steps"].iloc[0]) if len(good) else None
            rows.append(
                {
                    "objective": objective,
                    "kind": kind,
                    "reference": reference,
                    "reference_fid": target_fid,
                    "evaluations": steps,
                    "speedup": target_steps / steps if steps else None,
                    "tried": " ".join(str(s) for s in sorted(runs["steps"])),
                }
            )
    return pd.DataFrame(rows)


def _cosine_worse(metrics: pd.DataFrame) -> list[dict]:
    """ "The cosine schedule is worse than linear" for each objective ``X`` with an ``X_cosine`` counterpart, from final
    checkpoints' metrics (Figure 4's runs): cosine FID minus linear FID, Welch t over seeds or the paired bootstrap
    with one seed; ``supported`` when the interval lies wholly above 0."""
    final = metrics[metrics["checkpoint"] == "final"] if "checkpoint" in metrics else metrics
    rows = []
    for objective in sorted(set(final["objective"])):
        cosine, linear = final[final["objective"] == f"{objective}_cosine"], final[final["objective"] == objective]
        if cosine.empty or linear.empty:
            continue
        if min(len(cosine), len(linear)) >= 2:
            difference, low, high = welch_interval(cosine["fid"].to_numpy(), linear["fid"].to_numpy())
            method = f"95% Welch t over seeds ({len(cosine)} vs {len(linear)})"
        else:
            found = bootstrap_interval(cosine, linear)
            difference, low, high = found or (cosine["fid"].mean() - linear["fid"].mean(), np.nan, np.nan)
            method = "95% paired bootstrap over samples" if found else "none: one seed and no bootstrap"
        rows.append(
            {
                "table": "figure4",
                "claim": f"the cosine schedule is worse than linear for {objective} (FID)",
                "difference": difference,
                "low95": low,
                "high95": high,
                "interval": method,
                "verdict": verdict(-high, -low),
            }
        )
    return rows


def summary_markdown(
    claims_table: pd.DataFrame,
    reach: pd.DataFrame | None = None,
    study: pd.DataFrame | None = None,
    quality: pd.DataFrame | None = None,
) -> str:
    """A short generated summary: one line per claim, numbers from the tables, never written by hand; with
    ``reach`` (:func:`evaluations_to_reach`) also the fewest model evaluations per sampler reaching Table 1's FID,
    with ``study`` (Table 5) the weightings ranked by FID, with ``quality`` (Table 1) what its sample sets are made
    of: precision, recall and the recognisable fraction beside their ceilings."""
    lines = [
        "# What this run shows",
        "",
        "Generated from the tables (difference = objective minus baseline; lower FID/KID is better).",
        "",
    ]
    for _, c in claims_table.iterrows():
        if c["interval"] == NO_BASELINE:
            lines.append(f"- **{c['verdict']}**: {c['claim']} ({c['table']}): there is no baseline model to compare.")
            continue
        interval = f"[{c['low95']:.3g}, {c['high95']:.3g}]" if np.isfinite(c["low95"]) else "no interval"
        lines.append(
            f"- **{c['verdict']}**: {c['claim']} ({c['table']}): {c['difference']:+.3g}, {interval}; {c['interval']}."
        )
    if quality is not None and "prc_precision_mean" in quality:
        lines += ["", "## What Table 1's samples are (mean over seeds; the real data's value in brackets)", ""]
        for _, r in quality.iterrows():
            lines.append(f"- {r['dataset']}, {r['objective']}: " + _quality_text(r))
    if study is not None and not study.empty:
        lines += ["", "## Weightings ranked by FID (Table 5; mean +- std over seeds, lowest first)", ""]
        for _, r in study.sort_values("fid_mean").iterrows():
            spread = f" +- {r['fid_std']:.3g}" if pd.notna(r["fid_std"]) else ""
            lines.append(f"- {r['objective']} ({r.get('weighting', r['objective'])}): {r['fid_mean']:.4g}{spread}")
    if reach is not None and not reach.empty:
        lines += [
            "",
            f"## Fewest model evaluations per image reaching {reach['reference'].iloc[0]}'s FID (Table 4)",
            "",
        ]
        for _, r in reach.iterrows():
            found = f"{int(r['evaluations'])} ({_times(r)})" if pd.notna(r["evaluations"]) else "not reached"
            lines.append(
                f"- {r['objective']}, {r['kind']}: {found}; its FID {r['reference_fid']:.4g}, tried {r['tried']}."
            )
    return "\n".join(lines) + "\n"


def _quality_text(row: pd.Series) -> str:
    """``recognisable 0.41 (0.96), precision 0.55 (0.86), recall 0.80 (0.94)``: a Table 1 row's sample quality
    beside the real data's (the reference's recognisable fraction, the noise floor's precision and recall)."""
    parts = [
        (name, row.get(f"{column}_mean"), row.get(ceiling))
        for name, column, ceiling in (
            ("recognisable", "recognisable", "reference_recognisable"),
            ("precision", "prc_precision", "noise_floor_prc_precision"),
            ("recall", "prc_recall", "noise_floor_prc_recall"),
        )
    ]
    return ", ".join(
        f"{name} {value:.2f}" + (f" ({ceiling:.2f})" if pd.notna(ceiling) else "")
        for name, value, ceiling in parts
        if value is not None and pd.notna(value)
    )


def _times(reach: pd.Series) -> str:
    """A row of :func:`evaluations_to_reach` in words: ``25x fewer``, ``5x more``, ``as many``, or ``the reference
    itself`` (its own sampler reaches its own FID)."""
    speedup = reach["speedup"]
    if np.isclose(speedup, 1.0):
        own = f"{reach['kind']}{int(reach['evaluations'])}" == reach["reference"]
        return "the reference itself" if own else "as many"
    return f"{speedup:.3g}x fewer" if speedup > 1 else f"{1 / speedup:.3g}x more"
