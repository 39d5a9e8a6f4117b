"""The paper's artifacts as config sections, and the tables rendered as LaTeX: lists that the workflow (at parse
time, so this module imports nothing) and :mod:`p2core.tex` read."""

#: the config sections that each ask for one artifact built from runs (and so name datasets, objectives, archs)
RUN_ARTIFACTS = ("table1", "table3", "table4", "table5", "figure1", "figure2", "figure4")

#: table -> (its LaTeX macro prefix, the columns that name a row, the column whose groups each get one bold best value);
#: each becomes ``results/paper/<table>.tex`` wherever the config has the table
LATEX_TABLES = {
    "table1": ("TabOne", ("dataset", "objective"), "dataset"),
    "table3": ("TabThree", ("arch", "objective"), "arch"),
    "table4": ("TabFour", ("sampler", "objective"), "sampler"),
    "table5": ("TabFive", ("dataset", "objective"), "dataset"),
}
