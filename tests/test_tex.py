"""The results as LaTeX: the DAG's table<N>.tex and numbers.tex compile in a document that inputs them, and every
number a macro holds is the table's."""

import re
import shutil
import subprocess

import pandas as pd
import pytest
from conftest import ROOT

from p2core.tex import macro_part, number

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
