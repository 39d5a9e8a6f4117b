rule figure1:
    input:
        "results/analysis/fig1_{dataset}.csv",
    output:
        report(
            "results/figures/fig1_{dataset}.png",
            caption="../report/fig1.rst",
            category="Figures",
            labels={"figure": "1", "dataset": "{dataset}"},
        ),
    log:
        "logs/figure1/{dataset}.log",
    benchmark:
        "benchmarks/jobs/figure1/{dataset}.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        code=code("figure1"),
    shell:
        "{params.code} {resources.python} -m p2core figure fig1 {input} --out {output} > {log} 2>&1"


rule figure2:
    input:
        "results/analysis/fig2_reconstructions.npz",
    output:
        report(
            "results/figures/fig2_reconstructions.png",
            caption="../report/fig2.rst",
            category="Figures",
            labels={"figure": "2"},
        ),
    log:
        "logs/figure2/fig2.log",
    benchmark:
        "benchmarks/jobs/figure2/fig2.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        title=lambda w: "Fig. 2: x0_hat from x_t, {dataset}, {objective} model".format(**section("figure2")),
        code=code("figure2"),
    shell:
        "{params.code} {resources.python} -m p2core figure fig2 {input} --title {params.title:q} --out {output} > {log} 2>&1"


rule figure3:
    output:
        report(
            "results/figures/fig3_weights.png",
            caption="../report/fig3.rst",
            category="Figures",
            labels={"figure": "3"},
        ),
    log:
        "logs/figure3/fig3.log",
    benchmark:
        "benchmarks/jobs/figure3/fig3.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        weightings=fig3_weightings(),
        num_timesteps=config["num_timesteps"],
        code=figure3_code,
    shell:
        "{params.code} {resources.python} -m p2core figure fig3 --num-timesteps {params.num_timesteps} --weightings {params.weightings:q}"
        " --out {output} > {log} 2>&1"


rule figure4:
    input:
        figure4_metrics,
    output:
        report(
            "results/figures/fig4_fid_during_training.png",
            caption="../report/fig4.rst",
            category="Figures",
            labels={"figure": "4"},
        ),
    log:
        "logs/figure4/fig4.log",
    benchmark:
        "benchmarks/jobs/figure4/fig4.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        code=code("figure4"),
    shell:
        "{params.code} {resources.python} -m p2core figure fig4 {input} --out {output} > {log} 2>&1"


rule sample_figure:
    """Figures 5 and 6: sample grids side by side, same sampling seed in every panel."""
    input:
        unpack(sample_figure_inputs),
    output:
        report(
            "results/figures/{fig}_samples.png",
            caption="../report/samples.rst",
            category="Figures",
            labels={"figure": "{fig}"},
        ),
    log:
        "logs/sample_figure/{fig}.log",
    benchmark:
        "benchmarks/jobs/sample_figure/{fig}.tsv"
    wildcard_constraints:
        fig=r"fig\d+",
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        panels=lambda w, input: " ".join(
            shlex.quote(f"{label}={path}") for label, paths in input.items() for path in paths
        ),
        title=lambda w: config["sample_figures"][w.fig].get("title", w.fig),
        code=code("sample_figure"),
    shell:
        "{params.code} {resources.python} -m p2core figure samples {params.panels} --title {params.title:q} --out {output} > {log} 2>&1"


rule learned_weighting_figure:
    """Figure 9 (beyond the paper): the weight each learned-weighting run of Table 5 arrived at, beside P2's."""
    input:
        unpack(learned_weighting_inputs),
    output:
        report(
            "results/figures/fig9_learned_weighting.png",
            caption="../report/fig9.rst",
            category="Figures",
            labels={"figure": "9"},
        ),
    log:
        "logs/learned_weighting_figure/fig9.log",
    benchmark:
        "benchmarks/jobs/learned_weighting_figure/fig9.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        runs=lambda w, input: " ".join(
            shlex.quote(f"{label}={path}") for label, paths in input.items() for path in paths
        ),
        code=code("learned_weighting_figure"),
    shell:
        "{params.code} {resources.python} -m p2core figure learned {params.runs} --out {output} > {log} 2>&1"


rule readme_picture:
    """The README's picture (committed, so a clone shows it before any run): a copy of a sample figure under
    docs/img/. Not part of `all`; redraw it from your own run by naming it as the target."""
    input:
        "results/figures/{fig}_samples.png",
    output:
        "docs/img/{fig}_samples.png",
    log:
        "logs/readme_picture/{fig}.log",
    wildcard_constraints:
        fig=r"fig\d+",
    conda:
        "../envs/p2.yaml"
    shell:
        "cp {input} {output} > {log} 2>&1"


rule figure7:
    input:
        table4_metrics,
    output:
        report(
            "results/figures/fig7_fid_vs_steps.png",
            caption="../report/fig7.rst",
            category="Figures",
            labels={"figure": "7"},
        ),
    log:
        "logs/figure7/fig7.log",
    benchmark:
        "benchmarks/jobs/figure7/fig7.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        code=code("figure7"),
    shell:
        "{params.code} {resources.python} -m p2core figure fig7 {input} --out {output} > {log} 2>&1"


rule training_curves:
    """Training loss by quarter of t over the steps of Table 1's trained runs of one dataset (their train.csv; an
    imported model has none)."""
    input:
        # each run's train.csv, declared once the run is finished (rule declare_training_log)
        lambda w: [training_log(folder) for _, folder in table1_runs(w.dataset, trained_only=True)],
    output:
        report(
            "results/figures/curves_{dataset}.png",
            caption="../report/curves.rst",
            category="Figures",
            labels={"figure": "training curves", "dataset": "{dataset}"},
        ),
    log:
        "logs/training_curves/{dataset}.log",
    benchmark:
        "benchmarks/jobs/training_curves/{dataset}.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        logs=lambda w: " ".join(
            shlex.quote(f"{o}={training_log(folder)}") for o, folder in table1_runs(w.dataset, trained_only=True)
        ),
        title=lambda w: f"Training loss by quarter of t, {w.dataset} (thin: seeds, bold: mean)",
        code=code("training_curves"),
    shell:
        "{params.code} {resources.python} -m p2core figure curves {params.logs} --title {params.title:q} --out {output} > {log} 2>&1"
