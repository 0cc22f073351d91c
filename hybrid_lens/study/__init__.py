"""The component-ablation study of Borobia et al. (arXiv 2603.22473), run by `hybrid-lens study`.

`spec` says what a study is (`StudySpec`, validated without torch); `plan` names the study's
conditions, derived from a model's `Layout` (each wraps an `interventions.Condition`, which does the
ablating); `runner` evaluates every (condition, task) pair once into the SQLite `store` (resumable,
shardable); `tasks` turns each task into per-example rows; `diagnostics` computes the clean model's
hidden-state metrics and per-token view; `stats` and `tables` compute paired bootstrap CIs, ratios
and the report's tables; `report` only renders them (Markdown, plotly figures, HTML); `commands`
adds the `study` and `report` subcommands to the one command line, `hybrid_lens.cli`. Importing this
package imports none of its modules, so the command line answers before torch loads.
"""
