"""Evaluation sets and baseline answer sets, matched question by question.

Questions are read with the pipeline's own reader (``data.sources.load_rows``), so every
supported record shape works: Arena-Hard / AlpacaEval-style single-turn files (``prompt``,
``instruction``), MT-Bench-style ``turns`` (two turns), chat ``messages``. A question's id is
its source id (``uid``, ``question_id``, ``id``, ...).

Baseline answer files (JSONL, JSON or Parquet) may hold, per record:

* FastChat / Arena-Hard v0.1 ``model_answer``: ``question_id`` + ``choices[0].turns``, each
  turn a string (MT-Bench reference answers) or ``{"content": ...}``;
* current Arena-Hard ``model_answer``: ``uid`` + ``messages`` whose assistant content is a
  string or ``{"answer": ...}``;
* our own outputs: ``answers.parquet`` of ``moaa eval`` and ``sft.parquet`` (``source_id`` +
  ``messages``), ``candidates.parquet`` of ``moaa sample`` (candidate 0);
* AlpacaEval outputs (``instruction`` + ``output``) and plain ``{id, answer}`` or
  ``{id, answers: [...]}``.

A baseline answer is found by question id, or by the question's first user turn when the
answer record has no id. When an answer record also carries its question's text and that
text differs from the question, the pair is refused: the ids collide across two sets.

Answer files are read by :mod:`moaa_cluster.data.records`; a record that cannot be read or
used is a reject with its reason, never a failed evaluation. Question and answer files may be
on object storage (``s3://...``), read as instruction sources are
(:mod:`moaa_cluster.data.sources`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from moaa_cluster.data.chat import chat_messages
from moaa_cluster.data.records import Reject, describe, read_records
from moaa_cluster.data.sources import Source, input_records
from moaa_cluster.runs import storage

ID_KEYS = ("question_id", "uid", "source_id", "prompt_id", "id")


class BadAnswer(Reject):
    """A baseline record that cannot be used, with the reason."""


@dataclass(frozen=True)
class BaselineAnswer:
    """The baseline's answer to one question: one text per turn, and where it came from."""

    answers: tuple[str, ...]
    where: str
    question_id: str | None = None
    question: str | None = None  # first user turn, when the record carries it
    model: str | None = None


def question_sources(paths: str | Path | list) -> list[Source]:
    """One :class:`Source` per questions file, named ``<parent dir>/<file stem>``.

    The parent directory is part of the name because evaluation sets tend to call every
    file ``question.jsonl``; the name is part of each row's id and shown per source.
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths or [])
    if not items:
        raise ValueError("no questions file given")
    sources, names = [], set()
    for p in items:
        path = storage.expand(p)
        name = _source_name(path)
        base, k = name, 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.add(name)
        sources.append(Source(name=name, path=path))
    return sources


def _source_name(path: str) -> str:
    """``<parent dir>/<file stem>`` of a local path or a URI (its bucket counts as a dir)."""
    named = PurePosixPath(path.split("://", 1)[1]) if storage.is_uri(path) else Path(path)
    return f"{named.parent.name}/{named.stem}" if named.parent.name else named.stem


def _content(value: object, what: str) -> str:
    if isinstance(value, dict):
        for key in ("answer", "content", "text"):
            if isinstance(value.get(key), str):
                return value[key]
        raise BadAnswer(f"{what} is an object without answer/content/text")
    if not isinstance(value, str):
        raise BadAnswer(f"{what} must be a string, got {type(value).__name__}")
    return value


def _record_id(rec: dict) -> str | None:
    for key in ID_KEYS:
        if rec.get(key) is not None:
            return str(rec[key])
    return None


def parse_answer_record(rec: object, where: str) -> BaselineAnswer:
    """One baseline record of any supported shape -> :class:`BaselineAnswer`.

    Raises:
        BadAnswer: The record has no usable answer.
    """
    if not isinstance(rec, dict):
        raise BadAnswer(f"record must be an object, got {type(rec).__name__}")
    model = next(
        (str(rec[k]) for k in ("model_id", "model", "generator") if rec.get(k) is not None), None
    )
    qid = _record_id(rec)
    answers, question = _answers_and_question(rec)
    if not answers:
        raise BadAnswer("record holds no assistant answer")
    if any(not a.strip() for a in answers):
        raise BadAnswer("an answer turn is empty")
    if qid is None and question is None:
        raise BadAnswer(f"record has no question id ({', '.join(ID_KEYS)}) and no question text")
    return BaselineAnswer(
        answers=tuple(answers), where=where, question_id=qid, question=question, model=model
    )


def _answers_and_question(rec: dict) -> tuple[list[str], str | None]:
    """A record's answer turns, by its shape, and its question's first user turn if carried."""
    if rec.get("choices") is not None:
        return _choices_answers(rec["choices"]), None
    if rec.get("candidates") is not None:  # moaa sample
        return _candidates_answers(rec)
    if rec.get("messages") is not None:
        return _messages_answers(rec["messages"])
    if rec.get("output") is not None:  # AlpacaEval
        answers = [_content(rec["output"], "'output'")]
        question = rec["instruction"] if isinstance(rec.get("instruction"), str) else None
        return answers, question
    if rec.get("answers") is not None:
        if not isinstance(rec["answers"], list) or not rec["answers"]:
            raise BadAnswer("'answers' must be a non-empty list of strings")
        return [_content(a, f"answers[{i}]") for i, a in enumerate(rec["answers"])], None
    if rec.get("answer") is not None:
        return [_content(rec["answer"], "'answer'")], None
    raise BadAnswer("record has none of choices, messages, candidates, output, answers, answer")


def _choices_answers(choices: object) -> list[str]:
    """FastChat / Arena-Hard v0.1: the turns of ``choices[0]``."""
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadAnswer("'choices' must be a non-empty list of objects")
    turns = choices[0].get("turns")
    if not isinstance(turns, list) or not turns:
        raise BadAnswer("'choices[0].turns' must be a non-empty list")
    return [_content(t, f"choices[0].turns[{i}]") for i, t in enumerate(turns)]


def _candidates_answers(rec: dict) -> tuple[list[str], str | None]:
    """``moaa sample``: the prompt's earlier answers, then candidate 0; the first user turn."""
    cands = rec["candidates"]
    if not isinstance(cands, list) or not cands:
        raise BadAnswer("'candidates' must be a non-empty list")
    prompt = rec.get("prompt") or []
    if not isinstance(prompt, list) or not all(isinstance(m, dict) and "role" in m for m in prompt):
        raise BadAnswer("'prompt' must be a list of {role, content}")
    earlier = [
        _content(m.get("content"), f"prompt[{i}].content")
        for i, m in enumerate(prompt)
        if m["role"] == "assistant"
    ]
    answers = [*earlier, _content(cands[0], "candidates[0]")]
    users = [
        _content(m.get("content"), f"prompt[{i}].content")
        for i, m in enumerate(prompt)
        if m["role"] == "user"
    ]
    return answers, users[0] if users else None


def _messages_answers(messages: object) -> tuple[list[str], str | None]:
    """Chat ``messages``: the assistant turns, and the first user turn."""
    if not isinstance(messages, list):
        raise BadAnswer("'messages' must be a list of {role, content}")
    answers, users = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise BadAnswer(f"messages[{i}] must be an object with 'role' and 'content'")
        if m["role"] == "assistant":
            answers.append(_content(m.get("content"), f"messages[{i}].content"))
        elif m["role"] == "user":
            users.append(_content(m.get("content"), f"messages[{i}].content"))
    return answers, users[0] if users else None


def _records(path: Path) -> Iterator[tuple[str, object]]:
    """``(where, record or Reject)`` for every record of a JSONL / JSON / Parquet file."""
    return read_records(path)


def _baseline_records(given: str | Path) -> tuple[str, Iterator[tuple[str, object]]]:
    """A baseline answers file as named in outputs, and its records (an object on object
    storage read as :func:`~moaa_cluster.data.sources.input_records` reads it).

    Raises:
        FileNotFoundError: A local file does not exist.
        ConfigError: An object does not exist.
    """
    path = storage.expand(given)
    if storage.is_uri(path):
        return path, input_records(path, "baseline answers")
    if not Path(path).exists():
        raise FileNotFoundError(f"baseline answers {path} do not exist")
    return path, _records(Path(path))


@dataclass
class BaselineIndex:
    """Baseline answers indexed by question id and by question text."""

    by_id: dict[str, BaselineAnswer]
    by_text: dict[str, BaselineAnswer]
    files: list[str]

    def find(self, row: dict) -> BaselineAnswer:
        """The baseline answer to question ``row`` (``source_id``, ``turns``).

        Raises:
            BadAnswer: No answer for it, or the answer found belongs to another question,
                or it has fewer turns than the question.
        """
        first = str(row["turns"][0]).strip()
        sid = row.get("source_id")
        found = self.by_id.get(str(sid)) if sid is not None else None
        if found is None:
            found = self.by_text.get(first)
        if found is None:
            key = f"question id {sid}" if sid is not None else "this question's text"
            raise BadAnswer(f"no baseline answer for {key} in {', '.join(self.files)}")
        if found.question is not None and found.question.strip() != first:
            raise BadAnswer(
                f"baseline answer {found.where} (id {found.question_id}) was written for a "
                "different question: the ids of the question and answer sets do not match"
            )
        if len(found.answers) < len(row["turns"]):
            raise BadAnswer(
                f"baseline answer {found.where} has {len(found.answers)} turn(s); the question "
                f"has {len(row['turns'])}"
            )
        return found


def load_baseline(paths: str | Path | list) -> tuple[BaselineIndex, list[dict]]:
    """Reads baseline answer files; returns the index and rejects of unusable records.

    A question id answered twice with different texts keeps the first answer; the second is
    a reject saying so.
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths or [])
    if not items:
        raise ValueError("no baseline answers file given")
    by_id: dict[str, BaselineAnswer] = {}
    by_text: dict[str, BaselineAnswer] = {}
    rejects: list[dict] = []
    files = []
    for p in items:
        path, records = _baseline_records(p)
        files.append(path)
        for where, rec in records:
            try:
                if isinstance(rec, Reject):
                    raise rec
                ans = parse_answer_record(rec, where)
            except Exception as exc:  # a record can fail only itself
                reason = str(exc) if isinstance(exc, Reject) else describe(exc)
                rejects.append({"where": where, "stage": "baseline", "reason": reason})
                continue
            if ans.question_id is not None:
                prev = by_id.get(ans.question_id)
                if prev is not None and prev.answers != ans.answers:
                    rejects.append(
                        {
                            "where": where,
                            "stage": "baseline",
                            "reason": f"question id {ans.question_id} already answered by "
                            f"{prev.where} with a different text; the first answer is used",
                        }
                    )
                    continue
                by_id.setdefault(ans.question_id, ans)
            if ans.question is not None:
                by_text.setdefault(ans.question.strip(), ans)
    return BaselineIndex(by_id=by_id, by_text=by_text, files=files), rejects


def attach_baseline(rows: list[dict], index: BaselineIndex) -> tuple[list[dict], list[dict]]:
    """Adds ``baseline`` (answer texts, one per question turn) to every row that has one.

    Returns:
        ``(rows with a baseline, rejects of rows without one)``.
    """
    keep, rejects = [], []
    for row in rows:
        try:
            found = index.find(row)
        except BadAnswer as exc:
            rejects.append(
                {
                    "source": row["source"],
                    "where": row["source_id"] or row["id"],
                    "stage": "baseline",
                    "reason": str(exc),
                    "record": {"turns": row["turns"]},
                }
            )
            continue
        keep.append({**row, "baseline": list(found.answers[: len(row["turns"])])})
    return keep, rejects


def judge_inputs(
    turns: list[str], system: str | None, model_answers: list[str], baseline_answers: list[str]
) -> tuple[list[dict], str, str]:
    """The prompt and the two answers the judge compares.

    A single-turn question is judged as it is: the question (with its system message, if
    any) and the two answers. A multi-turn question is judged on the **full conversation**:
    each side answered every turn with its own earlier answers as context, so the judge sees
    all user turns and each side's answers to all of them, labelled by turn.

    Returns:
        ``(prompt messages, model's answer text, baseline's answer text)``.
    """
    if len(model_answers) != len(turns) or len(baseline_answers) < len(turns):
        raise ValueError("one model and one baseline answer per question turn")
    if len(turns) == 1:
        return chat_messages(system, turns[:1]), model_answers[0], baseline_answers[0]
    lines = [f"[System]\n{system}"] if system else []
    lines += [f"[Turn {t + 1}]\n{q}" for t, q in enumerate(turns)]

    def transcript(answers: list[str]) -> str:
        return "\n\n".join(f"[Turn {t + 1}]\n{a}" for t, a in enumerate(answers[: len(turns)]))

    question = (
        f"A conversation of {len(turns)} user turns. Judge each assistant's answers to all "
        "of them, each answer given with that assistant's own earlier answers as context.\n\n"
        + "\n\n".join(lines)
    )
    return (
        [{"role": "user", "content": question}],
        transcript(model_answers),
        transcript(baseline_answers),
    )
