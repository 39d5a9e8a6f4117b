"""Every command that README.md, docs/ and config/README.md show is run, and every relative link in them resolves, so
the documentation cannot rot.

Commands are the lines of ```bash blocks and inline code that starts with `.venv/bin/`, `snakemake ` or `bash `.
Snakemake commands run as dry runs (`-n`); the report and `p2core runs` use the tiny built DAG; scripts that would
run for long or need the internet (benchmarks, `p2core prefetch`) run with `--help`; `bash .ci/run` (this suite) not
at all. They run in a copy of the repository, except a command that installs (`.ci/install`): it runs in this checkout,
whose environment it checks (a no-op once installed) and never in a copy, which would repoint the environment there.
"""

import os
import re
import shlex
import shutil
import subprocess

import pytest
from conftest import ROOT

DOCUMENTS = ("README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")), "config/README.md")
LINKED = (*DOCUMENTS, "CONTRIBUTING.md")  # documents whose relative links must resolve


def documented_commands() -> list[tuple[str, str]]:
    """(document, command) for every command shown in the documents, in order, without trailing comments."""
    found = []
    for document in DOCUMENTS:
        text = (ROOT / document).read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            found += [(document, line.split("  #")[0].strip()) for line in block.splitlines() if line.strip()]
        spans = re.findall(r"`((?:\.venv/bin/|snakemake |bash )[^`]*)`", text)
        found += [(document, span) for span in spans]
    return list(dict.fromkeys(found))


def as_test_run(command: str) -> str | None:
    """The command as the test runs it (see the module docstring), or None for the suite itself."""
    if command == "bash .ci/run":
        return None
    if re.search(r"(^|/)python benchmarks/|p2core prefetch", command):
        return command + " --help"
    if "--report" in command:
        return command + " --configfile config/test.yaml"  # rendered from the built tiny DAG
    if "snakemake" in command:
        return command + " -n"
    return command


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A copy of the repository with the project environment linked in: like a fresh clone, no images and no
    released model file (the paper configs plan without them)."""
    work = tmp_path_factory.mktemp("docs")
    for folder in ("workflow", "p2core", "config", "profiles", "benchmarks", ".ci", "docs"):
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", work)
    (work / ".venv").symlink_to(ROOT / ".venv")
    return work


def test_the_documents_show_the_commands_users_need():
    commands = [command for _, command in documented_commands()]
    assert "bash .ci/run" in commands
    assert any(c.startswith("bash .ci/install && .venv/bin/snakemake") for c in commands)
    assert any("--configfile config/paper.yaml" in c and "--profile profiles/slurm" in c for c in commands)


@pytest.mark.parametrize("document, command", documented_commands())
def test_documented_command_runs(document, command, workspace, request):
    run = as_test_run(command)
    if run is None:
        pytest.skip("the test suite itself")
    cwd = workspace
    if ".ci/install" in command:
        cwd = ROOT  # the install is only meaningful (and a no-op once done) for the environment of this checkout
    if "--report" in command or "p2core runs" in command:  # they read results: the built tiny DAG has them
        cwd = request.getfixturevalue("built")
        if not (cwd / ".venv").exists():
            (cwd / ".venv").symlink_to(ROOT / ".venv")
    # the folder's own p2core is its environment's, as a clone's editable install would make it (.venv's is this
    # checkout's: the Snakefile refuses a folder whose p2core is not the one Snakemake imports)
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", "PYTHONPATH": str(cwd)}
    result = subprocess.run(["bash", "-c", run], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{document}: {shlex.quote(run)} failed:\n{(result.stdout + result.stderr)[-3000:]}"


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a document's headings: lower case, punctuation other than '-' dropped, spaces to '-'."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def relative_links() -> list[tuple[str, str]]:
    """(document, target) of every link or image in the documents that is not a web address."""
    found = []
    for document in LINKED:
        text = re.sub(r"```.*?```", "", (ROOT / document).read_text(), flags=re.S)
        found += [(document, target) for target in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in target]
    return found


def test_the_documents_link_each_other():
    targets = {target for _, target in relative_links()}
    assert {"docs/reruns.md", "docs/results.md", "docs/img/fig5_samples.png"} <= targets
    assert len(DOCUMENTS) >= 10, DOCUMENTS  # README, config/README and the docs/ pages


@pytest.mark.parametrize("document, target", relative_links())
def test_relative_link_resolves(document, target):
    path, _, anchor = target.partition("#")
    file = (ROOT / document).parent / path if path else ROOT / document
    assert file.exists(), f"{document}: link to {target}: no such file"
    if anchor:
        assert anchor in anchors(file.read_text()), f"{document}: link to {target}: no such heading in {file.name}"
