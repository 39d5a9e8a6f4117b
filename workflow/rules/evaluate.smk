rule evaluate:
    """FID and KID of one sample set (read from its shards) against the prepared real images (extractor from the
    dataset's config)."""
    input:
        samples=lambda w: sample_shards(w.dataset, w.objective, w.arch, w.seed, w.ckpt, w.sampler),
        data="results/data/{dataset}/meta.json",
        domain=domain_weights,
    output:
        "results/metrics/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}.json",
    log:
        "logs/evaluate/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}.log",
    benchmark:
        "benchmarks/jobs/evaluate/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}.tsv"
    conda:
        "../envs/p2.yaml"
    params:
        extractor=lambda w: dataset_cfg(w.dataset)["extractor"],
        domain=lambda w, input: f"--domain-weights {input.domain}" if input.domain else "",
        kid=config["evaluation"]["kid_subset_size"],
        weights_dir=config["weights_dir"],
        tags=tags,
        code=CODE["evaluate"],
    shell:
        "python -m p2core evaluate --samples {input.samples} --data results/data/{wildcards.dataset}"
        " --extractor {params.extractor} {params.domain} --weights-dir {params.weights_dir}"
        " --kid-subset-size {params.kid} --cache-dir results/metrics/cache {params.tags} --out {output} > {log} 2>&1"
