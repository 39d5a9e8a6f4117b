rule distance_vs_snr:
    """Figure 1 data: distance between noisy versions of one image vs of two images, over SNR (no model)."""
    input:
        unpack(distance_inputs),
        data="results/data/{dataset}/meta.json",
    output:
        "results/analysis/fig1_{dataset}.csv",
    log:
        "logs/distance_vs_snr/{dataset}.log",
    benchmark:
        "benchmarks/jobs/distance_vs_snr/{dataset}.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        distance=lambda w: dataset_cfg(w.dataset)["distance"],
        domain=lambda w, input: f"--domain-weights {input.domain}" if "domain" in input.keys() else "",
        schedule=config["schedule"],
        num_timesteps=config["num_timesteps"],
        points=lambda w: section("figure1")["points"],
        pairs=lambda w: section("figure1")["pairs"],
        weights_dir=config["weights_dir"],
        unverified="--allow-unverified-weights" if config["evaluation"]["allow_unverified_weights"] else "",
        code=code("distance_vs_snr"),
    shell:
        "{params.code} {resources.python} -m p2core distance-vs-snr --data results/data/{wildcards.dataset} --distance {params.distance} {params.domain}"
        " --weights-dir {params.weights_dir} {params.unverified} --schedule {params.schedule}"
        " --num-timesteps {params.num_timesteps}"
        " --points {params.points} --pairs {params.pairs} --out {output} > {log} 2>&1"


rule reconstructions:
    """Figure 2 data: x0_hat predicted by a trained model from x_t at several t."""
    input:
        checkpoint=figure2_checkpoint,
        data=lambda w: f"results/data/{section('figure2')['dataset']}/meta.json",
    output:
        "results/analysis/fig2_reconstructions.npz",
    log:
        "logs/reconstructions/fig2.log",
    benchmark:
        "benchmarks/jobs/reconstructions/fig2.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        data=lambda w: f"results/data/{section('figure2')['dataset']}",
        images=lambda w: section("figure2")["images"],
        points=lambda w: section("figure2")["points"],
        code=code("reconstructions"),
    shell:
        "{params.code} {resources.python} -m p2core reconstruct --checkpoint {input.checkpoint} --data {params.data} --num-images {params.images}"
        " --points {params.points} --out {output} > {log} 2>&1"
