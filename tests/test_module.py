"""The workflow deployed as a Snakemake module of another workflow, as snakedeploy writes it: a host folder with its
own config and a Snakefile that says ``module p2: snakefile: <checkout>/workflow/Snakefile, config: config`` and
``use rule * from p2``. The jobs reach p2core as the installed package of the environment (here the editable install
of this checkout), never through a path derived from the host's folder."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, make_workspace, snakemake

HOST_SNAKEFILE = """configfile: "config/config.yaml"


module p2:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from p2


rule host_environment:
    output:
        "host.txt",
    shell:
        "echo PYTHONPATH=${{{{PYTHONPATH:-}}}} > {{output}}"
"""


def test_the_workflow_runs_as_a_module_of_another_workflow(built, tmp_path):
    """The host holds a copy of the tiny DAG's results (built by ``built`` from the same code): the module plans them
    as up to date (the same params and code fingerprints, now read from the installed p2core); with Table 1 and one of
    its evaluations removed, it rebuilds both, equal to the originals, in a folder with no p2core and no PYTHONPATH;
    and the host's own rule inherits no prefix or PYTHONPATH from the module."""
    host = tmp_path / "host"
    (host / "config").mkdir(parents=True)
    shutil.copy(built / "config/test.yaml", host / "config/config.yaml")
    shutil.copytree(built / "results", host / "results")
    shutil.copytree(built / ".snakemake/metadata", host / ".snakemake/metadata")
    (host / "Snakefile").write_text(HOST_SNAKEFILE.format(snakefile=ROOT / "workflow/Snakefile"))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}

    planned = snakemake(host, "-n", "--cores", "2", "results/table1.csv", env=env)
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "Nothing to be done" in planned.stdout + planned.stderr, (planned.stdout + planned.stderr)[-3000:]

    evaluation = "results/metrics/digits/p2/a/seed0/final/ddpm5.json"
    (host / evaluation).unlink()
    (host / "results/table1.csv").unlink()
    result = snakemake(host, "--cores", "2", "results/table1.csv", "host.txt", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^(local)?rule evaluate:", result.stdout + result.stderr, re.M)
    rebuilt, original = (json.loads((folder / evaluation).read_text()) for folder in (host, built))
    assert rebuilt["provenance"]["step"] == original["provenance"]["step"]  # the same command and code fingerprint
    assert {k: v for k, v in rebuilt.items() if k != "provenance"} == {
        k: v for k, v in original.items() if k != "provenance"
    }
    assert (host / "results/table1.csv").read_text() == (built / "results/table1.csv").read_text()
    assert (host / "host.txt").read_text().strip() == "PYTHONPATH="
    assert not (host / "p2core").exists()


def test_a_folder_whose_p2core_is_not_the_installed_one_is_refused_in_one_line(tmp_path):
    """Jobs run `python -m p2core` in the working folder, where a p2core copy comes first: a Snakemake whose own p2core
    (the fingerprints' source) is another one stops before planning, naming both."""
    workdir = make_workspace(tmp_path)
    console_script = Path(sys.executable).parent / "snakemake"  # imports the installed p2core, not the folder's
    result = subprocess.run([str(console_script), "-n"], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = [
        line for line in result.stderr.strip().splitlines() if not line.startswith("Using workflow specific profile")
    ]
    assert len(lines) == 1 and "is not the p2core this Snakemake imports" in lines[0], result.stderr
