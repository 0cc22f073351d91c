"""The component-ablation study of Borobia et al. (arXiv 2603.22473), run by `hybrid-lens study`.

`conditions` derives the study's conditions from a model's layer kinds; `runner` evaluates every
(condition, task) pair once into the SQLite `store` (resumable, shardable); `tasks` turns each
task into per-example rows; `stats` computes paired bootstrap CIs and ratios; `report` renders the
Markdown tables, plotly figures and HTML report; `cli` holds the `study` and `report` commands.
"""
