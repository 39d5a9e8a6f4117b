"""The results as LaTeX for a write-up, regenerated with every other artifact: ``table<N>.tex`` (booktabs tables, FID
and KID as mean +- std over seeds, the best mean per group in bold, the difference to the baseline with its 95%
interval) and ``numbers.tex`` (one ``\\newcommand`` per number a text cites).

Macro names are built from the table and the row so that a reader can guess them: ``\\TabOneDigitsPTwoFid`` is Table
1's FID mean for dataset ``digits``, objective ``p2``; then ``...FidStd``, ``...Kid``, ``...KidStd``, ``...FidDiff``
(objective minus baseline), ``...FidDiffLow``/``...FidDiffHigh`` (its 95% interval), ``...FidVerdict``
(``supported``, ``not supported``, ``inconclusive``), the same for KID, and in Table 5 ``...FidVsPTwo...`` against P2.
Digits in names are spelled out (LaTeX macro names are letters only): ``p2_gamma05`` -> ``PTwoGammaZeroFive``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from p2core import provenance
from p2core.artifacts import LATEX_TABLES
from p2core.atomic import atomic_write_text
from p2core.errors import P2Error
from p2core.tables import NO_BASELINE, verdict

CAPTIONS = {
    "table1": "FID and KID per dataset, baseline against P2 (mean $\\pm$ std over seeds; best per dataset in bold).",
    "table3": "Configuration ablations (mean $\\pm$ std over seeds; best per architecture in bold).",
    "table4": "FID per sampler and number of steps (best per sampler in bold).",
    "table5": "The weighting study: one loss weighting per row (mean $\\pm$ std over seeds; best in bold).",
}
#: the metrics each row reports, and the differences (column suffix, macro part, label)
METRICS = (("fid", "Fid", "FID"), ("kid", "Kid", "KID"))
DIFFERENCES = (("", "Diff", "baseline"), ("_vs_p2", "VsPTwo", "P2"))
DIGITS = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")


def macro_part(name: object) -> str:
    """``p2_gamma05`` -> ``PTwoGammaZeroFive``: letters only, each word and digit capitalised."""
    words = re.findall(r"[A-Za-z]+|\d", str(name))
    return "".join(DIGITS[int(w)] if w.isdigit() else w[0].upper() + w[1:] for w in words)


def decimals(value: float) -> int:
    """Decimals a table shows for ``value``: one from 100, two from 1, else three significant digits."""
    magnitude = abs(float(value))
    if not math.isfinite(magnitude) or magnitude >= 100:
        return 1
    return 2 if magnitude >= 1 or magnitude == 0 else 2 - math.floor(math.log10(magnitude))


def number(value: float, like: float | None = None) -> str:
    """A table number, ``--`` when missing; with the decimals of ``like`` (a std or interval beside its mean)."""
    if value is None or not math.isfinite(float(value)):
        return "--"
    places = decimals(value if like is None or not math.isfinite(float(like)) else like)
    return f"{float(value):.{places}f}"


def escape(text: object) -> str:
    return re.sub(r"([_%&#$])", r"\\\1", str(text))


def table_tex(name: str, table: pd.DataFrame) -> str:
    """One booktabs table (a ``table`` float with caption and ``\\label{tab:<name>}``)."""
    _, keys, group = LATEX_TABLES[name]
    differences = [d for d in DIFFERENCES if f"fid_diff{d[0]}" in table]
    columns = [escape(k.capitalize()) for k in keys] + [label for _, _, label in METRICS]
    columns += [f"$\\Delta$FID vs {label} [95\\%]" for _, _, label in differences]
    best = {metric: table.groupby(group)[f"{metric}_mean"].transform("min") for metric, _, _ in METRICS}
    lines = [
        "\\begin{table}[ht]",
        "\\centering",
        f"\\begin{{tabular}}{{{'l' * len(keys)}{'r' * (len(columns) - len(keys))}}}",
        "\\toprule",
        " & ".join(columns) + " \\\\",
        "\\midrule",
    ]
    for index, row in table.iterrows():
        cells = [escape(row[k]) for k in keys]
        for metric, _, _ in METRICS:
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            text = number(mean) + (f" \\pm {number(std, like=mean)}" if pd.notna(std) else "")
            bold = pd.notna(mean) and mean == best[metric][index]
            cells.append(f"$\\mathbf{{{text}}}$" if bold else f"${text}$")
        for suffix, _, _ in differences:
            difference = row[f"fid_diff{suffix}"]
            if pd.isna(difference):
                cells.append("no baseline" if row.get(f"interval{suffix}") == NO_BASELINE else "--")
                continue
            low, high = row[f"fid_diff{suffix}_low95"], row[f"fid_diff{suffix}_high95"]
            interval = (
                f" {{\\scriptsize $[{number(low, difference)}, {number(high, difference)}]$}}" if pd.notna(low) else ""
            )
            cells.append(f"${number(difference)}${interval}")
        lines.append(" & ".join(cells) + " \\\\")
    lines += [
        "\\bottomrule",
        "\\end{tabular}",
        f"\\caption{{{CAPTIONS[name]}}}",
        f"\\label{{tab:{name}}}",
        "\\end{table}",
    ]
    return "\n".join(lines) + "\n"


def macros(name: str, table: pd.DataFrame) -> dict[str, str]:
    """Every number of one table as ``macro name -> text`` (see the module docstring for the names)."""
    prefix, keys, _ = LATEX_TABLES[name]
    found = {}
    for _, row in table.iterrows():
        stem = prefix + "".join(macro_part(row[k]) for k in keys)
        for metric, part, _ in METRICS:
            found[f"{stem}{part}"] = number(row[f"{metric}_mean"])
            found[f"{stem}{part}Std"] = number(row[f"{metric}_std"], like=row[f"{metric}_mean"])
            for suffix, difference, _ in DIFFERENCES:
                column = f"{metric}_diff{suffix}"
                if column not in row or pd.isna(row[column]):
                    continue
                low, high = row[f"{column}_low95"], row[f"{column}_high95"]
                name_of = f"{stem}{part}{difference}"
                found[name_of] = number(row[column])
                found[f"{name_of}Low"], found[f"{name_of}High"] = number(low, row[column]), number(high, row[column])
                found[f"{stem}{part}{'' if difference == 'Diff' else difference}Verdict"] = verdict(
                    float(low), float(high)
                )
    return found


def write_tex(inputs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """``table<N>.tex`` for each table CSV in ``inputs`` (``results/table1.csv``, ...) and ``numbers.tex`` for all
    of them in ``out_dir``, each with a provenance sidecar naming the CSVs it comes from. Returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {Path(path).stem: pd.read_csv(path) for path in inputs}
    unknown = sorted(set(tables) - set(LATEX_TABLES))
    if unknown:
        raise P2Error(f"no LaTeX rendering for {', '.join(unknown)}; known: {', '.join(LATEX_TABLES)}")
    written, commands = [], {}
    for name, table in tables.items():
        path = atomic_write_text(out_dir / f"{name}.tex", table_tex(name, table))
        provenance.write_sidecar(path, {"aggregates": [str(p) for p in inputs if Path(p).stem == name]})
        written.append(path)
        for macro, text in macros(name, table).items():
            if macro in commands:
                raise P2Error(f"two numbers would both be \\{macro}; rename an objective or dataset")
            commands[macro] = text
    body = "".join(f"\\newcommand{{\\{macro}}}{{{escape(text)}}}\n" for macro, text in sorted(commands.items()))
    header = "% Generated by p2core tex from " + ", ".join(map(str, inputs)) + "; do not edit.\n"
    path = atomic_write_text(out_dir / "numbers.tex", header + body)
    provenance.write_sidecar(path, {"aggregates": [str(p) for p in inputs]})
    return [*written, path]
