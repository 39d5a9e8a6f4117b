rule import_model:
    """A model trained elsewhere, named by ``datasets.<d>.objectives.<o>.checkpoint`` (the authors' released files),
    as the run folder's ema.pt in place of training it: loaded with weights_only, strictly into the arch's UNet, its
    SHA-256 recorded on first import (checkpoints.lock.json beside it) and refused if the file changes later. A file
    not downloaded yet is no input (so a dry run plans the DAG before any download): the job says where to get it."""
    input:
        source=lambda w: [IMPORTED[w.run]] if Path(IMPORTED[w.run]).is_file() else [],
        data=lambda w: f"results/data/{split_run(w.run)[0]}/meta.json",
    output:
        protected(f"results/models/{{run,{IMPORTED_RUN_PATTERN}}}/{EMA_FILE}"),
    log:
        "logs/import_model/{run}.log",
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        source=lambda w: IMPORTED[w.run],
        spec=import_spec,
        code=code("import_model"),
    shell:
        "{params.code} {resources.python} -m p2core import --source {params.source:q} --data $(dirname {input.data}) --out $(dirname {output})"
        " --spec {params.spec:q} > {log} 2>&1"


# an imported run's ema.pt matches both rules' outputs: it is imported, never trained
ruleorder: import_model > train
