rule sample:
    """Samples from a run's EMA weights (final or a training snapshot) with a named sampler; same seed everywhere."""
    input:
        # the run's final ema.pt, written after every snapshot: the snapshot named by {ckpt} exists once it does
        "results/models/{dataset}/{objective}/{arch}/seed{seed}/ema.pt",
    output:
        samples="results/samples/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}/samples.npz",
        grid="results/samples/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}/grid.png",
    params:
        checkpoint=checkpoint_file,
        num=config["sampling"]["num_samples"],
        batch_size=config["sampling"].get("batch_size", 64),
        seed=config["sampling"].get("seed", 0),
        precision=config["sampling"].get("precision", "fp32"),
        code=CODE["sample"],
    threads: config["sampling"].get("threads", 1)
    resources:
        gpu=config["sampling"].get("gpus", 0),
    conda:
        "../envs/p2.yaml"
    log:
        "logs/sample/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}.log",
    benchmark:
        "benchmarks/jobs/sample/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}.tsv"
    shell:
        "python -m p2core sample --checkpoint {params.checkpoint} --sampler {wildcards.sampler} --num {params.num}"
        " --batch-size {params.batch_size} --seed {params.seed} --precision {params.precision} --threads {threads}"
        " --out {output.samples} --grid {output.grid} --grid-scale 4 > {log} 2>&1"
