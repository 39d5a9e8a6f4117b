rule reference:
    """Reference statistics of a dataset for one backend and extractor (features, mean, covariance, noise floor; or
    clean-fid's published statistics): computed once, used by every evaluation of that dataset."""
    input:
        data="results/data/{dataset}/meta.json",
        domain=lambda w: domain_weights(w) if w.backend == TORCH_FIDELITY else [],
    output:
        "results/reference/{dataset}/{backend}_{extractor}.npz",
    log:
        "logs/reference/{dataset}/{backend}_{extractor}.log",
    benchmark:
        "benchmarks/jobs/reference/{dataset}/{backend}_{extractor}.tsv"
    conda:
        "../envs/p2.yaml"
    threads: config["evaluation"]["threads"]
    resources:
        python=PYTHON,
        gpu=config["evaluation"]["gpus"],
        mem_mb=config["evaluation"]["mem_mb"],
        runtime=lambda w, attempt: by_attempt(config["evaluation"]["runtime_min"], attempt),
    params:
        domain=lambda w, input: f"--domain-weights {input.domain}" if input.domain else "",
        published=published_statistics,
        extractor=lambda w: dataset_cfg(w.dataset)["extractor"],
        unverified="--allow-unverified-weights" if config["evaluation"]["allow_unverified_weights"] else "",
        floor=config["sampling"]["num_samples"],
        kid=config["evaluation"]["kid_subset_size"],
        weights_dir=config["weights_dir"],
        code=code("reference"),
    shell:
        "{params.code} {resources.python} -m p2core reference --data results/data/{wildcards.dataset} --backend {wildcards.backend}"
        " --extractor {params.extractor} {params.domain} {params.published} --weights-dir {params.weights_dir} {params.unverified} --floor-size {params.floor}"
        " --kid-subset-size {params.kid} --threads {threads} --no-progress --out {output} > {log} 2>&1"


rule evaluate:
    """FID and KID of one sample set (read from its shards) against its dataset's reference statistics, one per
    backend, with a bootstrap interval over samples."""
    input:
        samples=lambda w: sample_shards(w.dataset, w.objective, w.arch, w.seed, w.ckpt, w.sampler),
        reference=reference_stats,
    output:
        "results/metrics/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}.json",
    log:
        "logs/evaluate/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}.log",
    benchmark:
        "benchmarks/jobs/evaluate/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}.tsv"
    conda:
        "../envs/p2.yaml"
    threads: config["evaluation"]["threads"]
    resources:
        python=PYTHON,
        gpu=config["evaluation"]["gpus"],
        mem_mb=config["evaluation"]["mem_mb"],
        runtime=lambda w, attempt: by_attempt(config["evaluation"]["runtime_min"], attempt),
    params:
        kid=config["evaluation"]["kid_subset_size"],
        bootstrap=config["evaluation"]["bootstrap"],
        tags=tags,
        code=code("evaluate"),
    shell:
        "{params.code} {resources.python} -m p2core evaluate --samples {input.samples} --reference {input.reference}"
        " --kid-subset-size {params.kid} --bootstrap {params.bootstrap} --threads {threads} --no-progress {params.tags}"
        " --out {output} > {log} 2>&1"
