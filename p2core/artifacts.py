"""The tables this project renders as LaTeX, and how: one list that the workflow's rules (at parse time, so it imports
nothing heavy) and :mod:`p2core.tex` both read."""

#: table -> (its LaTeX macro prefix, the columns that name a row, the column whose groups each get one bold best value);
#: each becomes ``results/paper/<table>.tex`` wherever the config has the table
LATEX_TABLES = {
    "table1": ("TabOne", ("dataset", "objective"), "dataset"),
    "table3": ("TabThree", ("arch", "objective"), "arch"),
    "table4": ("TabFour", ("sampler", "objective"), "sampler"),
    "table5": ("TabFive", ("dataset", "objective"), "dataset"),
}
