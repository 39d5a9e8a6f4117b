"""The results as LaTeX: the DAG's table<N>.tex and numbers.tex compile in a document that inputs them, and every
number a macro holds is the table's."""

import re
import shutil
import subprocess

import pandas as pd
import pytest
from conftest import ROOT

from p2core.tex import macro_part, number, write_tex

TABLES = ("table1", "table3", "table4", "table5")


@pytest.fixture(scope="module")
def pdflatex():
    install = subprocess.run(["bash", str(ROOT / "tests/tex/install.sh")], capture_output=True, text=True)
    if install.returncode == 3:
        pytest.skip(install.stderr.strip())
    assert install.returncode == 0, install.stderr[-2000:]
    return shutil.which("pdflatex")


def test_macro_names_are_letters_a_reader_can_guess():
    assert macro_part("p2_gamma05") == "PTwoGammaZeroFive" and macro_part("digits") == "Digits"
    assert macro_part("dpmpp2m10") == "DpmppTwoMOneZero"
    assert (number(7.7791), number(0.012345), number(123.45), number(float("nan"))) == ("7.78", "0.0123", "123.5", "--")
    assert number(0.2, like=7.2) == "0.20" and number(0.01234, like=0.5) == "0.012"  # a std as its mean


def test_tables_become_booktabs_and_macros_with_the_best_in_bold(tmp_path):
    from test_tables import metrics

    from p2core.tables import table1, table5

    rows = [
        ("d", "a", "A", o, s, f + 0.2 * s, 0.1)
        for o, f in (("baseline", 10.0), ("p2", 7.0), ("p2_gamma05", 8.0))
        for s in range(3)
    ]
    for name, build in (("table1", table1), ("table5", table5)):
        build(metrics(rows)).to_csv(tmp_path / f"{name}.csv", index=False)
    written = write_tex([tmp_path / "table1.csv", tmp_path / "table5.csv"], tmp_path / "paper")
    assert [p.name for p in written] == ["table1.tex", "table5.tex", "numbers.tex"]
    macros = dict(re.findall(r"\\newcommand\{\\(\w+)\}\{([^}]*)\}", written[-1].read_text()))
    assert macros["TabFiveDPTwoGammaZeroFiveFidVsPTwo"] == "1.00" and macros["TabOneDPTwoFid"] == "7.20"
    assert (
        macros["TabOneDPTwoFidVerdict"] == "supported"
        and macros["TabFiveDPTwoGammaZeroFiveFidVsPTwoVerdict"] == "not supported"
    )
    table = written[1].read_text()
    assert "$\\mathbf{7.20 \\pm 0.20}$" in table and "p2\\_gamma05" in table and "\\toprule" in table


def test_the_numbers_are_the_tables(built):
    paper = built / "results/paper"
    macros = dict(re.findall(r"\\newcommand\{\\(\w+)\}\{([^}]*)\}", (paper / "numbers.tex").read_text()))
    table1 = pd.read_csv(built / "results/table1.csv").set_index("objective")
    assert macros["TabOneDigitsPTwoFid"] == number(table1.loc["p2", "fid_mean"])
    assert macros["TabOneDigitsPTwoFidDiffLow"] == number(table1.loc["p2", "fid_diff_low95"])
    assert macros["TabOneDigitsPTwoFidVerdict"] in ("supported", "not supported", "inconclusive")
    table5 = pd.read_csv(built / "results/table5.csv").set_index("objective")
    assert macros["TabFiveDigitsMinSnrFidVsPTwo"] == number(table5.loc["min_snr", "fid_diff_vs_p2"])
    for name in TABLES:
        assert (paper / f"{name}.tex.provenance.json").is_file()
        assert "\\toprule" in (paper / f"{name}.tex").read_text()


def test_a_document_inputting_them_compiles(built, pdflatex, tmp_path):
    body = "\n".join(f"\\input{{{name}}}" for name in TABLES)
    (tmp_path / "paper.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\input{numbers}\n\\begin{document}\n"
        "P2 reaches FID \\TabOneDigitsPTwoFid{} against \\TabOneDigitsBaselineFid{} "
        "(difference \\TabOneDigitsPTwoFidDiff, 95\\% interval [\\TabOneDigitsPTwoFidDiffLow, "
        "\\TabOneDigitsPTwoFidDiffHigh]: \\TabOneDigitsPTwoFidVerdict).\n" + body + "\n\\end{document}\n"
    )
    env = {"TEXINPUTS": f"{built / 'results/paper'}:", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 1000 and "Undefined control sequence" not in result.stdout
