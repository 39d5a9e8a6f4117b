#!/usr/bin/env bash
# Run by Snakemake once, inside the environment it has just created from p2.yaml (--sdm conda): installs the p2core
# of the checkout that holds this workflow into it (editable: jobs run the checkout's code, as the fingerprints say).
set -euo pipefail
checkout=$(cd "$(dirname "$0")/../.." && pwd)
if [ ! -f "$checkout/pyproject.toml" ] || [ ! -d "$checkout/p2core" ]; then
  echo "p2.post-deploy.sh: no p2-repro checkout at $checkout; install p2core into ${CONDA_PREFIX:-this environment} yourself (pip install --no-deps -e <checkout>)" >&2
  exit 1
fi
python -m pip install --quiet --no-deps -e "$checkout"
