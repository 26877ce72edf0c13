"""The evaluation's up-front length check: questions that cannot fit a model's context.

Generation needs every turn plus the model's earlier answers (each at most ``max_tokens``)
plus the answer; the judge's largest prompt (K.4) holds the question, both answers, every
critique, then the verdict. Counted with each model's tokenizer, before any engine starts;
the split into questions and input rejects is
:func:`moaa_cluster.data.lengths.split_by_length`, shared with synth's check.
"""

from __future__ import annotations

import os
from collections import defaultdict

from moaa_cluster.data.lengths import split_by_length
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.evaluation.answers import judge_inputs
from moaa_cluster.evaluation.protocols import alpaca_eval2, arena_hard, mt_bench
from moaa_cluster.evaluation.settings import EvalSettings, ProtocolSettings
from moaa_cluster.judge.judge import JudgeSpec
from moaa_cluster.judge.prompts import (
    DEFAULT_CRITERIA,
    VERDICT_FOLLOWUP,
    aggregator_prompt,
    criteria_filter_prompt,
    proposer_prompt,
    render_question,
)


def length_rejects(
    rows: list[dict],
    model: ModelSpec,
    baseline_model: ModelSpec | None,
    judge: JudgeSpec,
    judge_specs: dict[str, ModelSpec],
    settings: EvalSettings,
) -> tuple[list[dict], list[dict]]:
    """Splits off questions that cannot fit a model's context, before any engine starts.

    Generation needs every turn plus the model's earlier answers (each at most
    ``max_tokens``) plus the answer; the judge's largest prompt (K.4) holds the question,
    both answers, every critique, then the verdict. Counted with each model's tokenizer.
    """
    return LengthCheck(model, baseline_model, judge, judge_specs, settings).split(rows)


def _input_reject(row: dict, reason: str) -> dict:
    return {
        "source": row["source"],
        "where": row["source_id"] or row["id"],
        "stage": "input",
        "reason": reason,
        "record": {"turns": list(row["turns"])},
    }


def protocol_templates(ps: ProtocolSettings) -> tuple[list[str], int]:
    """A benchmark protocol's judge prompts with empty fields, and the judge's answer budget."""
    empty = defaultdict(str)
    if ps.name == "alpaca_eval2":
        texts = [alpaca_eval2.SYSTEM_PROMPT + alpaca_eval2.fill_user_prompt("", "", "")]
        return texts, alpaca_eval2.MAX_TOKENS
    if ps.name == "arena_hard":
        texts = [arena_hard.SYSTEM_PROMPT + arena_hard.USER_TEMPLATE.format_map(empty)]
        return texts, ps.judge_max_tokens or arena_hard.MAX_TOKENS
    texts = [
        p.system_prompt + p.prompt_template.format_map(empty)
        for p in mt_bench.JUDGE_PROMPTS.values()
    ]
    return texts, ps.judge_max_tokens or mt_bench.MAX_TOKENS


def _n_tokens(tok, text: str) -> int:
    return len(tok(text).input_ids)


def _max_tokens(sampling: dict | None) -> int:
    return int((sampling or {}).get("max_tokens") or 16)


class LengthCheck:
    """Why a question cannot fit (:meth:`reason_for`), with each model's tokenizer loaded once.

    Only ``vllm`` models with a ``path`` are counted; the judge templates' cost is counted
    once per judge model when the check is made.
    """

    def __init__(
        self,
        model: ModelSpec,
        baseline_model: ModelSpec | None,
        judge: JudgeSpec,
        judge_specs: dict[str, ModelSpec],
        settings: EvalSettings,
    ):
        self.model = model
        self.baseline_model = baseline_model
        self.judge_specs = judge_specs
        self._cache: dict[str, object] = {}
        self.gen_max = _max_tokens(settings.sampling)
        self.base_max = _max_tokens(settings.baseline_sampling_or_default)
        self.protocol = settings.protocol
        if self.protocol.name == "pairwise":
            self.overhead = self._judge_overheads(judge)
        else:
            self.overhead = self._protocol_overhead(judge.aggregator)

    def tokenizer(self, spec: ModelSpec):
        if spec.backend != "vllm" or not spec.path:
            return None
        if spec.path not in self._cache:
            from moaa_cluster.engines.tokenizer import load_tokenizer
            from moaa_cluster.runs.model_cache import local_files  # a URI: its tokenizer

            path = local_files(spec.path) or spec.path  # a hub id when not a directory
            self._cache[spec.path] = load_tokenizer(
                path, spec.trust_remote_code, local_only=os.path.isdir(path)
            )
        return self._cache[spec.path]

    def _judge_overheads(self, judge: JudgeSpec) -> dict[str, int]:
        """Tokens of each judge model's largest template with an empty question and answers.

        The judge templates cost the same for every row: count them once per tokenizer with an
        empty question and answers, then add each row's own texts (token counts of pieces add
        up to within a few tokens; the margin in :meth:`_judge_reason` covers that and the
        chat template).
        """
        crit_max, verdict_max = _max_tokens(judge.sampling), _max_tokens(judge.verdict_sampling)
        n_prop = len(judge.proposers)
        overhead: dict[str, int] = {}
        for key in judge.models:
            tok = self.tokenizer(self.judge_specs[key])
            if tok is None:
                continue
            k2 = _n_tokens(tok, criteria_filter_prompt("", "", "")) + crit_max
            k3 = _n_tokens(tok, proposer_prompt(DEFAULT_CRITERIA, "", "", "")) + crit_max
            k4 = (
                _n_tokens(tok, aggregator_prompt(DEFAULT_CRITERIA, "", "", "", [""] * n_prop))
                + n_prop * crit_max
                + verdict_max
                + (_n_tokens(tok, VERDICT_FOLLOWUP) + 8 if judge.recover else 0)
            )
            overhead[key] = max(k2, k3, k4)
        return overhead

    def _protocol_overhead(self, key: str) -> dict[str, int]:
        """A benchmark protocol's largest prompt with empty fields, plus its answer budget."""
        tok = self.tokenizer(self.judge_specs[key])
        if tok is None:
            return {}
        texts, reserve = protocol_templates(self.protocol)
        return {key: max(_n_tokens(tok, t) for t in texts) + reserve}

    def split(self, rows: list[dict]) -> tuple[list[dict], list[dict]]:
        """``(rows that fit, reject records of those that cannot)``, in input order."""
        return split_by_length(rows, self.reason_for, _input_reject)

    def reason_for(self, row: dict) -> str | None:
        """Why ``row`` cannot fit (generation checked first, then the judge), or None."""
        turns, system = list(row["turns"]), row.get("system")
        reason = self._generation_reason(turns, system)
        if reason is None:
            # mt_bench has no baseline; its reference answer takes the baseline's place
            other = row.get("reference") if self.protocol.name == "mt_bench" else None
            reason = self._judge_reason(turns, system, other or row.get("baseline") or [])
        return reason

    def _generation_reason(self, turns: list[str], system: str | None) -> str | None:
        generators = [(self.model, self.gen_max)]
        if self.baseline_model:
            generators.append((self.baseline_model, self.base_max))
        for spec, mt in generators:
            tok = self.tokenizer(spec)
            if tok is None:
                continue
            own = sum(_n_tokens(tok, t) for t in turns) + (_n_tokens(tok, system) if system else 0)
            need = own + (len(turns) - 1) * mt + 8 * (2 * len(turns) + 1) + mt
            if need > spec.max_model_len:
                return (
                    f"question too long for {spec.name} (max_model_len {spec.max_model_len}): "
                    f"up to {need} tokens ({own} of question text, {mt} per answer turn)"
                )
        return None

    def _judge_reason(self, turns: list[str], system: str | None, baseline: list) -> str | None:
        empty = [""] * len(turns)
        question = render_question(judge_inputs(turns, system, empty, empty)[0])
        baseline_text = "\n\n".join(baseline)
        for key, fixed in self.overhead.items():
            spec = self.judge_specs[key]
            tok = self.tokenizer(spec)
            if baseline_text:
                base_len = _n_tokens(tok, baseline_text)
            else:
                base_len = 0 if not self.protocol.needs_baseline else self.base_max * len(turns)
            answers = base_len + self.gen_max * len(turns) + 16 * len(turns)
            need = fixed + _n_tokens(tok, question) + answers + 64
            if need > spec.max_model_len:
                return (
                    f"judge prompt too long for {spec.name} (max_model_len "
                    f"{spec.max_model_len}): up to {need} tokens with the question, both "
                    f"answers ({base_len} tokens of baseline, up to {self.gen_max} per model "
                    "turn) and the critiques"
                )
        return None
