rule prepare_dataset:
    """Images (embedded set, folder or zip) -> one uint8 array + metadata."""
    output:
        images="results/data/{dataset}/images.npy",
        meta="results/data/{dataset}/meta.json",
    log:
        "logs/prepare_dataset/{dataset}.log",
    benchmark:
        "benchmarks/jobs/prepare_dataset/{dataset}.tsv"
    conda:
        "../envs/p2.yaml"
    threads: 8  # decoding processes (fewer when snakemake has fewer cores)
    resources:
        python=PYTHON,
    params:
        source=lambda w: (
            f"--embedded {dataset_cfg(w.dataset)['source'].split(':', 1)[1]}"
            if dataset_cfg(w.dataset)["source"].startswith("embedded:")
            else f"--source {shlex.quote(dataset_cfg(w.dataset)['source'])} --name {w.dataset}"
            + ("" if dataset_cfg(w.dataset)["flip"] else " --no-flip")
            + (" --skip-unreadable" if dataset_cfg(w.dataset)["skip_unreadable"] else "")
        ),
        resolution=lambda w: dataset_cfg(w.dataset)["resolution"],
        code=code("prepare_dataset"),
    shell:
        "{params.code} {resources.python} -m p2core prepare {params.source} --resolution {params.resolution} --workers {threads}"
        " --out results/data/{wildcards.dataset} > {log} 2>&1"


rule train_domain_features:
    """The domain feature network (digit classifier) used for FID/KID on labelled embedded data."""
    input:
        rules.prepare_dataset.output.meta,
    output:
        "results/features/{dataset}/domain.pt",
    log:
        "logs/train_domain_features/{dataset}.log",
    benchmark:
        "benchmarks/jobs/train_domain_features/{dataset}.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        epochs=config["evaluation"]["domain_features"]["epochs"],
        min_accuracy=config["evaluation"]["domain_features"]["min_accuracy"],
        code=code("train_domain_features"),
    shell:
        "{params.code} {resources.python} -m p2core train-features --data results/data/{wildcards.dataset} --out {output} --epochs {params.epochs}"
        " --min-accuracy {params.min_accuracy} > {log} 2>&1"
