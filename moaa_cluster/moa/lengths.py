"""Synth's up-front length check: rows whose own text cannot fit a mixture's prompts.

The rule is :mod:`moaa_cluster.moa.budget`'s floor (every carried answer cut to the
truncation marker); the split into rows and input rejects is
:func:`moaa_cluster.data.lengths.split_by_length`, shared with the evaluation's check.
"""

from __future__ import annotations

from moaa_cluster.data.lengths import split_by_length
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.moa.budget import reserved_tokens
from moaa_cluster.moa.fitters import load_fitters
from moaa_cluster.moa.mixture import Mixture, Step, plan_steps, step_parts


def length_rejects(
    rows: list[dict],
    mixture: Mixture,
    specs: dict[str, ModelSpec],
    defaults: dict,
    fitters: dict | None = None,
) -> tuple[list[dict], list[dict]]:
    """Splits off rows whose own text cannot fit a model's context, whatever the answers.

    A row is rejected only when, for some call of some turn, the prompt with every carried
    answer (earlier final answers, the previous layer's proposals) cut to the truncation
    marker alone, plus the seat's ``max_tokens``, exceeds the model's ``max_model_len``
    (``ContextFitter.floor_check``). Longer answers are shortened at run time instead
    (``moaa_cluster.moa.budget``). Models without a local tokenizer are not checked.
    ``fitters``: :func:`load_fitters` of ``specs``, when the caller keeps them loaded.
    """
    fitters = load_fitters(specs) if fitters is None else fitters
    if not fitters:
        return rows, []
    return split_by_length(
        rows,
        lambda row: floor_reason(row, mixture, specs, fitters, defaults),
        _input_reject,
    )


def _input_reject(row: dict, reason: str) -> dict:
    return {
        "source": row["source"],
        "where": row["id"],
        "stage": "input",
        "reason": reason,
        "record": {"turns": row["turns"], "system": row["system"]},
    }


def floor_reason(
    row: dict, mixture: Mixture, specs: dict[str, ModelSpec], fitters: dict, defaults: dict
) -> str | None:
    """Why ``row`` cannot fit (the first call that cannot), or None when every call can."""
    # the floor replaces every answer with the marker: placeholders stand in for them
    placeholder = {**row, **{s.column: "" for s in plan_steps(mixture, len(row["turns"]))}}
    for t in range(len(row["turns"])):
        for layer_idx, layer in enumerate(mixture.layers):
            for key in dict.fromkeys(a.model for a in layer):
                fitter = fitters.get(key)
                if fitter is None:
                    continue
                # a model's seats in one layer get the same prompt: the largest answer decides
                seats = [(i, a) for i, a in enumerate(layer) if a.model == key]
                reserve = max(
                    reserved_tokens({**defaults, **a.sampling}.get("max_tokens")) for _, a in seats
                )
                base, proposals = step_parts(mixture, Step(t, layer_idx, *seats[0]), placeholder)
                n = fitter.floor_check(base, None if proposals is None else len(proposals), reserve)
                if n is not None:
                    spec = specs[key]
                    return (
                        f"prompt too long for {spec.name} (max_model_len {spec.max_model_len}): "
                        f"turn {t + 1}, layer {layer_idx + 1} needs {n} prompt tokens with every "
                        f"earlier answer cut to the truncation marker, + {reserve} to generate "
                        f"= {n + reserve}"
                    )
    return None
