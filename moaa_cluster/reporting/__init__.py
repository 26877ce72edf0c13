"""``moaa report RUN_DIR``: one markdown page with PNG plots and a cost table for a run.

It reads what a run directory holds, whatever task wrote it: ``synth`` (``sft.parquet``),
``sample``/``prefs`` (``candidates.parquet``/``prefs.parquet``), ``judge-eval``
(``judge_eval.json``), ``eval`` (``summary.json``, ``judgments.parquet``), ``train-sft`` /
``train-dpo`` (``metrics.jsonl``), or a pipeline directory whose subdirectories are such
stages. It writes ``report.md`` and ``plots/*.png`` into the run directory:

* tokens (prompt and generated) and wall time per stage and per model, throughput per model;
* the judge's verdict parse-failure and position-consistency rates;
* score distributions of chosen vs rejected candidates;
* win rates with their bootstrap intervals (and the length-controlled win rate);
* training loss curves;
* a cost table in the spirit of MoAA's cost comparison (arXiv 2505.03059, Tables 10-11):
  tokens per model, wall time, GPU-hours (wall time x the GPUs of the run's cluster
  config), and dollars when prices per 1M tokens (and per GPU-hour) are given.

A missing piece is skipped with a line saying what is missing; it never stops the report.

Modules: :mod:`.collect` finds and reads the run directories (one :class:`~.part.RunPart`
each, by the readers in :mod:`.readers`), :mod:`.costs` the cost table, :mod:`.plots` the
PNGs, :mod:`.page` writes the page, :mod:`.command` is the ``moaa report`` entry point.
"""

from __future__ import annotations

from moaa_cluster.reporting.collect import detect
from moaa_cluster.reporting.command import main, report_remote
from moaa_cluster.reporting.page import write_report

__all__ = ["detect", "main", "report_remote", "write_report"]
