rule sample:
    """One shard of a sample set: images START..START+N-1 from a run's EMA weights (final or a training snapshot).

    Image i depends only on (checkpoint, sampler, seed, i), so shards are independent jobs, each retried on its own,
    and a finished shard is never drawn again. Same seed for every model: Figures 5 and 6 compare like with like.
    The batch size changes no image, so it is a resource, not a param: changing it redraws nothing.
    """
    input:
        checkpoint_file,
    output:
        "results/samples/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}/shard{shard}.npz",
    log:
        "logs/sample/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}/shard{shard}.log",
    benchmark:
        "benchmarks/jobs/sample/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}/shard{shard}.tsv"
    conda:
        "../envs/p2.yaml"
    threads: config["sampling"]["threads"]
    resources:
        python=PYTHON,
        gpu=config["sampling"]["gpus"],
        mem_mb=config["sampling"]["mem_mb"],
        runtime=sample_runtime,
        batch_size=config["sampling"]["batch_size"],
    params:
        checkpoint=checkpoint_path,
        start=lambda w: shard_range(w.sampler, w.shard)[0],
        num=lambda w: shard_range(w.sampler, w.shard)[1],
        seed=config["sampling"]["seed"],
        precision=config["sampling"]["precision"],
        channels_last=str(config["sampling"]["channels_last"]).lower(),
        code=sample_code,
    shell:
        "{params.code} {resources.python} -m p2core sample --checkpoint {params.checkpoint} --sampler {wildcards.sampler} --start {params.start}"
        " --num {params.num} --batch-size {resources.batch_size} --seed {params.seed} --precision {params.precision}"
        " --channels-last {params.channels_last} --threads {threads} --out {output} > {log} 2>&1"


rule sample_grid:
    """A PNG grid of the first images of a sample set (every evaluated set, for a look at what each number scores)."""
    input:
        lambda w: sample_shards(w.dataset, w.objective, w.arch, w.seed, w.ckpt, w.sampler),
    output:
        report(
            "results/samples/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}/grid.png",
            caption="../report/grid.rst",
            category="Sample grids",
            labels={
                "dataset": "{dataset}",
                "objective": "{objective}",
                "arch": "{arch}",
                "seed": "{seed}",
                "checkpoint": "{ckpt}",
                "sampler": "{sampler}",
            },
        ),
    log:
        "logs/sample_grid/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}.log",
    benchmark:
        "benchmarks/jobs/sample_grid/{dataset}/{objective}/{arch}/seed{seed}/{ckpt}/{sampler}.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        code=code("sample_grid"),
    shell:
        "{params.code} {resources.python} -m p2core grid {input} --count 64 --scale 4 --out {output} > {log} 2>&1"
