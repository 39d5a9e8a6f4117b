rule table1:
    """FID/KID per dataset and objective, mean and std over seeds."""
    input:
        table1_metrics,
    output:
        csv=report("results/table1.csv", caption="../report/table1.rst", category="Tables", labels={"table": "1"}),
        markdown="results/table1.md",
    log:
        "logs/table1/table1.log",
    benchmark:
        "benchmarks/jobs/table1/table1.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        code=code("table1"),
    shell:
        "{params.code} {resources.python} -m p2core table table1 {input} --out {output.csv} --markdown {output.markdown} > {log} 2>&1"


rule table5:
    """The weighting study: one row per weighting (uniform, P2, Min-SNR, ...), against the baseline and against P2."""
    input:
        table5_metrics,
    output:
        csv=report("results/table5.csv", caption="../report/table5.rst", category="Tables", labels={"table": "5"}),
        markdown="results/table5.md",
    log:
        "logs/table5/table5.log",
    benchmark:
        "benchmarks/jobs/table5/table5.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        code=code("table5"),
    shell:
        "{params.code} {resources.python} -m p2core table table5 {input} --out {output.csv} --markdown {output.markdown} > {log} 2>&1"


rule table2:
    """Our numbers beside published ones from the user's literature CSV (none shipped, none invented)."""
    input:
        ours="results/table1.csv",
        literature=config["table2"]["literature"] or [],
    output:
        csv=report("results/table2.csv", caption="../report/table2.rst", category="Tables", labels={"table": "2"}),
        markdown="results/table2.md",
    log:
        "logs/table2/table2.log",
    benchmark:
        "benchmarks/jobs/table2/table2.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        literature=lambda w, input: f"--literature {input.literature}" if input.literature else "",
        code=code("table2"),
    shell:
        "{params.code} {resources.python} -m p2core table table2 {input.ours} {params.literature} --out {output.csv} --markdown {output.markdown}"
        " > {log} 2>&1"


rule table3:
    """Configuration ablations (a)-(e), baseline vs P2."""
    input:
        table3_metrics,
    output:
        csv=report("results/table3.csv", caption="../report/table3.rst", category="Tables", labels={"table": "3"}),
        markdown="results/table3.md",
    log:
        "logs/table3/table3.log",
    benchmark:
        "benchmarks/jobs/table3/table3.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        code=code("table3"),
    shell:
        "{params.code} {resources.python} -m p2core table table3 {input} --out {output.csv} --markdown {output.markdown} > {log} 2>&1"


rule table4:
    """The sampling-step sweep, baseline vs P2."""
    input:
        table4_metrics,
    output:
        csv=report("results/table4.csv", caption="../report/table4.rst", category="Tables", labels={"table": "4"}),
        markdown="results/table4.md",
    log:
        "logs/table4/table4.log",
    benchmark:
        "benchmarks/jobs/table4/table4.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        code=code("table4"),
    shell:
        "{params.code} {resources.python} -m p2core table table4 {input} --out {output.csv} --markdown {output.markdown} > {log} 2>&1"


rule summary:
    """The paper's claims that the configured tables test, with measured effects, intervals and verdicts."""
    input:
        summary_inputs(),
    output:
        report(
            "results/summary.md",
            caption="../report/summary.rst",
            category="Summary",
            labels={"summary": "claims"},
        ),
    log:
        "logs/summary/summary.log",
    benchmark:
        "benchmarks/jobs/summary/summary.tsv"
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        code=code("summary"),
    shell:
        "{params.code} {resources.python} -m p2core table summary {input} --out {output} > {log} 2>&1"


rule run_table:
    """Every training run behind the results: steps, last loss, speed, state, and where and with which code it ran."""
    input:
        evaluated_runs(),
    output:
        report("results/runs.csv", caption="../report/runs.rst", category="Runs"),
    log:
        "logs/run_table/run_table.log",
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        folders=lambda w, input: " ".join(shlex.quote(str(Path(path).parent)) for path in input),
        code=code("run_table"),
    shell:
        "{params.code} {resources.python} -m p2core runs {params.folders} --csv {output} > {log} 2>&1"


rule paper_tex:
    """The tables as LaTeX for a write-up (booktabs, best per group in bold) and numbers.tex: one \\newcommand per
    number, named after its table and row (p2core/tex.py), so a paper's text cites the DAG's numbers, never copies."""
    input:
        paper_tables(),
    output:
        [f"results/paper/{Path(table).stem}.tex" for table in paper_tables()],
        numbers="results/paper/numbers.tex",
    log:
        "logs/paper_tex/paper_tex.log",
    conda:
        "../envs/p2.yaml"
    resources:
        python=PYTHON,
    params:
        code=code("paper_tex"),
    shell:
        "{params.code} {resources.python} -m p2core tex {input} --out-dir results/paper > {log} 2>&1"
