"""Best-of-N baseline of the paper's Table 3: a reward model picks each instruction's answer.

The candidates are the layer-0 answers a synth run already stored as provenance
(``sft.parquet``'s ``calls``), the same teachers ``moaa derive`` uses for single / Combined-N /
Random-N, a ``solo`` seat (the aggregator model answering alone) included. Each candidate's
whole conversation (the row's system message and user turns, with the candidate's own answer
in every assistant turn) is rendered with the reward model's chat template and scored by
vLLM in its pooling runner (``classify``: in vLLM 0.32 a reward model is a sequence
classifier with one output; ``reward`` and ``score`` as task names were removed). Scoring
is a ``ray.data.llm`` processor (``engines.reward``): Best-of-N has no per-row dependencies,
so the library's batched offline inference fits it as it is.

Rules (ours; the paper names the reward model, ArmoRM-Llama3-8B, and nothing else):
  * the score is the reward head's raw output (``use_activation=False``): a sigmoid would
    squash the large logits of real reward models into float ties at 1.0;
  * the highest score wins; equal scores go to the lowest seat (the mixture's layer order),
    so the pick never depends on the order results come back in;
  * a candidate that stopped on ``finish_reason: length`` in any turn is scored and recorded
    but not chosen (``truncated="exclude"``, as stage 2 never chooses one); a row whose every
    candidate was cut is a reject;
  * a row with any candidate that could not be scored (a template that does not render, a
    conversation longer than the reward model's context, an engine error, a non-finite
    score) is a reject with the reasons: its best of fewer than N is not Best-of-N.

Output: ``<run_dir>/ablations/best-of-n-<reward model name>.parquet`` with derive's columns
(``id, source, messages, teacher``) plus ``reward_model``, ``score`` and ``candidates`` (each
candidate's ``teacher, seat, score, truncated``), and ``...rejects.jsonl`` beside it.

    moaa derive RUN_DIR best-of-n RUN_DIR --reward-model smollm2_135m_reward
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

from moaa_cluster.engines.reward import score
from moaa_cluster.engines.spec import ModelSpec
from moaa_cluster.errors import ConfigError
from moaa_cluster.moa.teachers import Teacher, teachers

log = logging.getLogger(__name__)

KIND = "best-of-n"
TRUNCATED_RULES = ("exclude", "allow")
CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"


# a candidate is one teacher's conversation (derive's Table 3 rows), scored by the reward model
Candidate = Teacher


def candidates(row: dict, layer: int = 0) -> list[Candidate]:
    """Every seat of ``layer`` in a synth row, solo seats included, as scorable conversations.

    Raises:
        ValueError: A seat has no answer for one of the row's turns, or the layer has no seat.
    """
    out = teachers(row, layer)
    if not out:
        raise ValueError(f"row {row['id']}: no layer-{layer} answers in its provenance")
    return out


def pick(
    cands: list[Candidate], scores: list[float], truncated: str = "exclude"
) -> Candidate | None:
    """The best candidate: highest score, the lowest seat among equals.

    With ``truncated="exclude"`` a truncated candidate is never picked; ``None`` when no
    candidate may be picked.
    """
    if truncated not in TRUNCATED_RULES:
        raise ValueError(f"truncated must be one of {TRUNCATED_RULES}, got {truncated!r}")
    eligible = [
        (score, c)
        for c, score in zip(cands, scores, strict=True)
        if truncated == "allow" or not c.truncated
    ]
    if not eligible:
        return None
    # max over (score, -seat): the first key decides, the lower seat wins a tie
    return max(eligible, key=lambda sc: (sc[0], -sc[1].seat))[1]


def assemble(
    rows: list[dict],
    scored: dict[tuple[str, int], tuple[float | None, str | None]],
    reward_model: str,
    layer: int = 0,
    truncated: str = "exclude",
) -> tuple[list[dict], list[dict]]:
    """The Best-of-N SFT rows and the rejects, in input order; every input row ends in one.

    Args:
        rows: Synth rows (``id, source, messages, calls``).
        scored: ``(row id, candidate index) -> (score, None)`` or ``(None, reason)``.
        reward_model: The reward model's name, written into every row.
        layer: The proposer layer whose answers are the candidates.
        truncated: ``exclude`` (default) or ``allow`` truncated candidates as the pick.
    """
    out, rejects = [], []
    for row in rows:
        picked, reject = _assemble_row(row, scored, reward_model, layer, truncated)
        if picked is not None:
            out.append(picked)
        else:
            rejects.append(reject)
    return out, rejects


def _assemble_row(
    row: dict,
    scored: dict[tuple[str, int], tuple[float | None, str | None]],
    reward_model: str,
    layer: int,
    truncated: str,
) -> tuple[dict | None, dict | None]:
    """One row's Best-of-N SFT row ``(row, None)``, or ``(None, reject)`` with the reason."""

    def reject(reason: str, table: list[dict] | None = None) -> tuple[None, dict]:
        return None, {
            "id": row["id"],
            "source": row.get("source"),
            "stage": KIND,
            "reason": reason,
            "candidates": table,
        }

    try:
        cands = candidates(row, layer)
    except ValueError as exc:
        return reject(str(exc))
    results = [scored.get((row["id"], c.index), (None, "no score came back")) for c in cands]
    table = [
        {"teacher": c.teacher, "seat": c.seat, "score": s, "truncated": c.truncated}
        for c, (s, _) in zip(cands, results, strict=True)
    ]
    failed = [
        f"{c.teacher} (seat {c.seat}): {err or 'score is not finite'}"
        for c, (s, err) in zip(cands, results, strict=True)
        if err is not None or s is None or not math.isfinite(s)
    ]
    if failed:
        return reject(
            f"{len(failed)} of {len(cands)} candidates not scored: " + "; ".join(failed), table
        )
    best = pick(cands, [s for s, _ in results], truncated)
    if best is None:
        return reject(
            f"all {len(cands)} candidates stopped at max_tokens (finish_reason: length)", table
        )
    return {
        "id": row["id"],
        "source": row["source"],
        "messages": best.messages,
        "teacher": best.teacher,
        "reward_model": reward_model,
        "score": results[best.index][0],
        "candidates": table,
    }, None


def requests(rows: list[dict], layer: int = 0) -> list[dict]:
    """One scoring request per candidate (``id, index, messages`` as JSON text).

    Rows whose candidates cannot be built are left out here; :func:`assemble` rejects them.
    """
    out = []
    for row in rows:
        try:
            cands = candidates(row, layer)
        except ValueError:
            continue
        for c in cands:
            out.append({"id": row["id"], "index": c.index, "messages": json.dumps(c.messages)})
    return out


# --------------------------------------------------------------------------- reward model


def cluster_config(name: str) -> dict:
    """``conf/cluster/<name>.yaml``, resolved where the configs put it (under ``cluster``: its
    interpolations say ``${cluster.<key>}``).

    Raises:
        ConfigError: No such cluster config.
    """
    from omegaconf import OmegaConf

    path = CONF_DIR / "cluster" / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"cluster config not found: {path}")
    root = OmegaConf.create({"cluster": OmegaConf.load(path)})
    return OmegaConf.to_container(root, resolve=True)["cluster"]


def load_reward_spec(
    name_or_path: str, models_dir: str | Path | None = None, cluster: str = "local"
) -> ModelSpec:
    """A reward model's spec from ``conf/model/<name>.yaml`` (or a YAML path), resolved for
    ``cluster`` (``conf/cluster/<cluster>.yaml``) and checked to be a pooling model.

    Raises:
        ConfigError: No such file, a spec that cannot run, or a model not configured for
            vLLM's pooling runner.
    """
    from omegaconf import OmegaConf

    from moaa_cluster.engines.spec import spec_from_dict

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONF_DIR / "model" / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"reward model config not found: {path}")
    from moaa_cluster.models.store import default_models_dir

    models_dir = models_dir or default_models_dir()
    root = OmegaConf.create(
        {
            "models_dir": str(models_dir),
            "cluster": cluster_config(cluster),
            "model": OmegaConf.load(path),
        }
    )
    spec = spec_from_dict(path.stem, OmegaConf.to_container(root, resolve=True)["model"])
    spec.validate()
    if spec.backend != "vllm":
        raise ConfigError(f"reward model {spec.name}: Best-of-N scores through vLLM only")
    if spec.engine_kwargs.get("runner") != "pooling":
        raise ConfigError(
            f"model {spec.name} is not configured as a reward model: its engine_kwargs need "
            "`runner: pooling` (vLLM's pooling runner; a generative model would be loaded to "
            "generate text)"
        )
    return spec


def run(
    run_dir: Path,
    spec: ModelSpec,
    *,
    layer: int = 0,
    limit: int | None = None,
    batch_size: int = 16,
    truncated: str = "exclude",
    out: Path | None = None,
) -> dict:
    """Best-of-N for a synth run: scores, picks, writes the parquet and its rejects.

    Ray must be initialized. Returns counts and the output paths.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from moaa_cluster.runs.files import append_jsonl, write_parquet_atomic

    src = Path(run_dir) / "sft.parquet"
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist: give a synth run directory")
    rows = pq.read_table(src).to_pylist()
    if limit is not None:
        rows = rows[:limit]
    started = time.perf_counter()
    scored = score(requests(rows, layer), spec, batch_size)
    picked, rejects = assemble(rows, scored, spec.name, layer, truncated)
    out = out or Path(run_dir) / "ablations" / f"{KIND}-{spec.name}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    rejects_path = out.with_name(out.name.removesuffix(".parquet") + ".rejects.jsonl")
    tmp = rejects_path.with_name(f".{rejects_path.name}.tmp")
    tmp.unlink(missing_ok=True)
    append_jsonl(tmp, rejects)
    tmp.rename(rejects_path)
    if picked:
        write_parquet_atomic(pa.Table.from_pylist(picked), out)
    else:
        out.unlink(missing_ok=True)  # an earlier run's file must not pass for this one's
    return {
        "rows": len(rows),
        "rows_ok": len(picked),
        "rejects": len(rejects),
        "candidates_scored": sum(1 for s, e in scored.values() if e is None),
        "seconds": round(time.perf_counter() - started, 1),
        "out": str(out),
        "rejects_path": str(rejects_path),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="moaa derive RUN_DIR best-of-n",
        description="Write the Best-of-N SFT dataset (Table 3): for every instruction of a "
        "synth run, the layer-0 answer a reward model served by vLLM scores highest.",
    )
    p.add_argument("run_dir", type=Path, help="a synth run directory holding sft.parquet")
    p.add_argument(
        "--reward-model",
        required=True,
        help="conf/model/<name>.yaml of a pooling (reward) model, or a YAML path",
    )
    p.add_argument("--layer", type=int, default=0, help="proposer layer to read (default 0)")
    p.add_argument("--limit", type=int, help="score only the first N rows")
    p.add_argument("--batch-size", type=int, default=16, help="requests per engine batch")
    p.add_argument(
        "--truncated",
        choices=TRUNCATED_RULES,
        default="exclude",
        help="may an answer cut at max_tokens be picked (default: exclude)",
    )
    p.add_argument("--cluster", default="local", help="conf/cluster/<name>.yaml (default local)")
    p.add_argument("--models-dir", help="default: $MOAA_MODELS_DIR or ~/.cache/moaa-cluster/models")
    p.add_argument("--out", type=Path, help="default: <run_dir>/ablations/best-of-n-<name>.parquet")
    args = p.parse_args(argv)

    from moaa_cluster import runtime

    try:
        spec = load_reward_spec(args.reward_model, args.models_dir, args.cluster)
        cluster = cluster_config(args.cluster)
        runtime.set_offline(cluster.get("env"))
        runtime.init_ray(cluster)
        result = run(
            args.run_dir,
            spec,
            layer=args.layer,
            limit=args.limit,
            batch_size=args.batch_size,
            truncated=args.truncated,
            out=args.out,
        )
    except (ConfigError, FileNotFoundError) as exc:
        print(f"moaa derive best-of-n: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{result['rows_ok']} of {result['rows']} rows -> {result['out']} "
        f"({result['rejects']} rejected: {result['rejects_path']}; {result['seconds']} s)"
    )
    if result["rows"] and not result["rows_ok"]:
        print("moaa derive best-of-n: error: every row was rejected", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
