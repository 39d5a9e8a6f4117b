rule train:
    """One training run: a dataset, an objective (baseline, P2, ...), an architecture and a seed.

    Only ema.pt, written last, is declared: checkpoint.pt, train.csv and the ema_step{N}.pt snapshots must survive
    a failed or preempted attempt (snakemake deletes the declared outputs of failed jobs), so the retry resumes; the
    snapshots and train.csv are declared afterwards by declare_snapshot and declare_training_log.
    ema.pt is write-protected once written, and the models of the datasets under ``freeze`` have no rule at all.
    Cadences, microbatch and the minutes before the time limit at which a SLURM job checkpoints and requeues itself
    (``train.resources.stop_before_limit_min``) are resources, not params: changing them reruns nothing.
    """
    input:
        "results/data/{dataset}/meta.json",
    output:
        protected(
            f"results/models/{{dataset,{TRAINED_DATASET_PATTERN}}}/{{objective}}/{{arch}}/seed{{seed}}/{EMA_FILE}"
        ),
    log:
        "logs/train/{dataset}/{objective}/{arch}/seed{seed}.log",
    benchmark:
        "benchmarks/jobs/train/{dataset}/{objective}/{arch}/seed{seed}.tsv"
    conda:
        "../envs/p2.yaml"
    threads: lambda w: train_resources(w.dataset, w.arch)["threads"]
    resources:
        python=PYTHON,
        mem_mb=lambda w: train_resources(w.dataset, w.arch)["mem_mb"],
        runtime=lambda w, attempt: by_attempt(train_resources(w.dataset, w.arch)["runtime_min"], attempt),
        gpu=lambda w: train_resources(w.dataset, w.arch)["gpus"],
        log_every=lambda w: train_execution(w.dataset, w.arch, "log_every"),
        save_every=lambda w: train_execution(w.dataset, w.arch, "save_every"),
        microbatch=lambda w: train_execution(w.dataset, w.arch, "microbatch"),
        stop_before_limit=lambda w: str(train_resources(w.dataset, w.arch)["stop_before_limit_min"]),
    params:
        spec=train_spec,
        out=lambda w: f"results/models/{run_path(**w)}",
        launch=train_launcher,
        code=train_code,
    shell:
        "{params.code} {resources.python} {params.launch} train --data results/data/{wildcards.dataset} --out {params.out} --spec {params.spec:q}"
        " --log-every {resources.log_every} --save-every {resources.save_every} --microbatch {resources.microbatch}"
        " --stop-before-limit {resources.stop_before_limit} --threads {threads} > {log} 2>&1"


rule declare_snapshot:
    """A training snapshot (the EMA weights kept at a step of `train.snapshot_steps`, for Figure 4) as a declared
    file: a hard link, under snapshots/, of the one training wrote, made once the run's final weights (written last)
    exist. So `--touch`, archives and storage plugins see what the snapshot sample jobs read, while training itself
    declares only its final weights (see rule train)."""
    input:
        model_file,
    output:
        "results/models/{dataset}/{objective}/{arch}/seed{seed}/snapshots/ema_step{step}.pt",
    log:
        "logs/declare_snapshot/{dataset}/{objective}/{arch}/seed{seed}/step{step}.log",
    conda:
        "../envs/p2.yaml"
    params:
        kept=lambda w: f"results/models/{run_path(w.dataset, w.objective, w.arch, w.seed)}/{snapshot_file(w.step)}",
    shell:
        "ln -f {params.kept} {output} 2> {log} || cp {params.kept} {output} 2>> {log}"


rule declare_training_log:
    """A finished run's training log (train.csv) as a declared file under log/, for the training curves: a hard link
    of the one training appended to, made once the run's final weights exist."""
    input:
        model_file,
    output:
        training_log("results/models/{dataset}/{objective}/{arch}/seed{seed}"),
    log:
        "logs/declare_training_log/{dataset}/{objective}/{arch}/seed{seed}.log",
    conda:
        "../envs/p2.yaml"
    params:
        kept=lambda w: f"results/models/{run_path(w.dataset, w.objective, w.arch, w.seed)}/{LOG_FILE}",
    shell:
        "ln -f {params.kept} {output} 2> {log} || cp {params.kept} {output} 2>> {log}"
