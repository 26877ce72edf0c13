"""The judge protocols of three public benchmarks, each in one module: its judge prompt
(reproduced exactly as the benchmark specifies it), how the judge's messages are built, the
judge's sampling settings, and how the judge's answer is read.

* :mod:`.alpaca_eval2` -- AlpacaEval 2's ``weighted_alpaca_eval_gpt4_turbo`` annotator: one
  token, read through its logprobs as the probability that the model's output is preferred.
* :mod:`.arena_hard` -- Arena-Hard-Auto v0.1: a pairwise verdict ``[[A>>B]]`` .. ``[[B>>A]]``
  against a baseline answer, judged in both orders.
* :mod:`.mt_bench` -- MT-Bench single-answer grading: a 1-10 rating per turn, reference-guided
  for math, reasoning and coding.

Pure Python: nothing here starts an engine or reads the project's shared data at run time;
the loaders read whatever copy of a benchmark file the caller names. The statistics built on
these judgments live beside this package in :mod:`moaa_cluster.evaluation`.
"""
