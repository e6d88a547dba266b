"""Insight: what a fine-tune changed. evaluate.py runs the end-of-run (and on-demand) evaluation, base
against tuned on held-out data (loss, perplexity, task checks, probes) and is the Trainer's
evaluation callback; row_losses.py ranks each example by its own loss (the hardest examples);
preference_figures.py scores held-out preference pairs; ab.py keeps the blind A/B; compare.py puts
runs side by side; headlines.py says an evaluation in one line; benchmarks.py runs standard benchmarks
(lm-eval, an optional install) base against tuned, bench_report.py puts their figures in words and tables,
and bench_suite/ is the offline suite shipped with the tool."""
