"""AlpacaEval 2's judge: the ``weighted_alpaca_eval_gpt4_turbo`` annotator.

Source: tatsu-lab/alpaca_eval at commit cd543a149df89434d8a54582c0151c0b945c3d20 (Apache-2.0),
``evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt`` and the annotator's
config. The prompt text is the benchmark's, reproduced exactly; the tests compare it byte for
byte with a copy of that file.

The judge sees an instruction and two outputs, identified as ``m`` (``output_1``) and ``M``
(``output_2``), and answers with one token. The preference is read from that token's top-5
logprobs: the probability mass of one identifier over the mass of both, not binarized.

How this module reproduces it, and where it chooses:

* **Messages.** The prompt file is chat markup, ``<|im_start|>system\\nSYSTEM\\n<|im_end|>``
  ``\\n<|im_start|>user\\nUSER\\n<|im_end|>`` (no newline at the end of the file). alpaca_eval's
  ``prompt_to_chatml`` takes a message's content as the text after its role line up to
  ``<|im_end|>``, stripped; for this file that removes exactly the newline after the role
  line and the one before ``<|im_end|>`` (the texts themselves start and end with
  non-space characters). :data:`SYSTEM_PROMPT` and :data:`USER_TEMPLATE` are those contents;
  :func:`to_chatml` puts the markup back and gives the file byte for byte.
* **Filling.** ``{instruction}``, ``{output_1}`` and ``{output_2}`` are replaced in one pass,
  so an inserted text is never scanned again, and the messages are built from the constants
  rather than by splitting filled markup. alpaca_eval replaces the placeholders one after the
  other and then splits the filled text at the markup; the results are identical unless an
  instruction or output itself contains a placeholder or ``<|im_end|>``, where alpaca_eval
  would substitute into it or cut the message short.
* **Order.** By default the reference (baseline) output is ``output_1`` (``m``) and the
  evaluated model's output ``output_2`` (``M``). alpaca_eval randomizes the order per
  instruction; :func:`model_position_for` does the same from a seed and the question id,
  deterministically (SHA-256, not Python's salted ``hash``), and :class:`AlpacaEvalGame`
  records the position so the parser reads the answer from the model's side.
* **Reading.** :func:`preference_from_logprobs` returns the probability that the *model's*
  output is preferred (alpaca_eval's parser returns ``2 - P(m)``, the preference for
  ``output_2`` on its 1-2 scale; with the default order our value is that minus 1). Tokens are
  compared after stripping surrounding whitespace, so ``" M"`` counts as ``M``: local
  tokenizers may fuse a space into the first token, and the identifier is the same answer.
  alpaca_eval matches the exact strings; for tokens without whitespace (GPT-4's) the two
  agree, and ``exact_tokens=True`` reproduces the exact match. Case is never folded: ``m``
  and ``M`` are the two answers. Entries naming the same identifier add their
  probabilities. An identifier absent from the top logprobs has probability 0 (alpaca_eval's
  rule); when neither is present the answer is unreadable and the result is ``None``.
* **Fallback.** :func:`preference_from_text` reads the generated text when no logprobs are
  available: 1.0 or 0.0, or ``None`` when the text does not start with one identifier.

Nothing here scores an unreadable answer: ``None`` goes back to the caller, which counts it.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

SYSTEM_PROMPT = (
    "You are a highly efficient assistant, who evaluates and selects the best large language "
    "model (LLMs) based on the quality of their responses to a given instruction. This "
    "process will be used to create a leaderboard reflecting the most accurate and "
    "human-preferred answers."
)

USER_TEMPLATE = (
    "I require a leaderboard for various large language models. I'll provide you with "
    "prompts given to these models and their corresponding outputs. Your task is to assess "
    "these responses, and select the model that produces the best output from a human "
    "perspective.\n"
    "\n"
    "## Instruction\n"
    "\n"
    "{\n"
    '    "instruction": """{instruction}""",\n'
    "}\n"
    "\n"
    "## Model Outputs\n"
    "\n"
    "Here are the unordered outputs from the models. Each output is associated with a "
    "specific model, identified by a unique model identifier.\n"
    "\n"
    "{\n"
    "    {\n"
    '        "model_identifier": "m",\n'
    '        "output": """{output_1}"""\n'
    "    },\n"
    "    {\n"
    '        "model_identifier": "M",\n'
    '        "output": """{output_2}"""\n'
    "    }\n"
    "}\n"
    "\n"
    "## Task\n"
    "\n"
    "Evaluate the models based on the quality and relevance of their outputs, and select the "
    "model that generated the best output. Answer by providing the model identifier of the "
    "best model. We will use your output as the name of the best model, so make sure your "
    "output only contains one of the following model identifiers and nothing else (no "
    "quotes, no spaces, no new lines, ...): m or M.\n"
    "\n"
    "## Best Model Identifier"
)

OUTPUT_1_ID = "m"  # the identifier of the output filled into {output_1}
OUTPUT_2_ID = "M"  # the identifier of the output filled into {output_2}
# The evaluated model's identifier unless the order is randomized: the reference goes first.
DEFAULT_MODEL_POSITION = OUTPUT_2_ID

# The annotator's completion settings. Temperature 1 is the benchmark's; with one token read
# through its logprobs it changes nothing, and at 1 the logprobs are the model's own
# distribution whether an engine reports them before or after temperature scaling.
MAX_TOKENS = 1
TEMPERATURE = 1.0
TOP_LOGPROBS = 5
JUDGE_SETTINGS: Mapping[str, object] = MappingProxyType(
    {
        "max_tokens": MAX_TOKENS,
        "temperature": TEMPERATURE,
        "logprobs": True,
        "top_logprobs": TOP_LOGPROBS,
    }
)

_PLACEHOLDER = re.compile(r"\{(instruction|output_1|output_2)\}")
_START, _END = "<|im_start|>", "<|im_end|>"
# An identifier standing alone: not part of a longer word such as "Model" or "my".
_ALONE = re.compile(r"(?<!\w)([mM])(?!\w)")
_LEADING = re.compile(r"\s*[\"'`*(\[]*([mM])(?!\w)")


@dataclass(frozen=True)
class AlpacaEvalGame:
    """One judge call: what to send and where the model's output was.

    Attributes:
        question_id: The instruction's id.
        model_position: The model output's identifier, ``"m"`` (output_1) or ``"M"``
            (output_2); pass it to the parsers.
        messages: The judge's chat messages (system, user).
    """

    question_id: str
    model_position: str
    messages: list[dict[str, str]]


def _check_position(model_position: str) -> str:
    if model_position not in (OUTPUT_1_ID, OUTPUT_2_ID):
        raise ValueError(f"model_position must be 'm' or 'M', got {model_position!r}")
    return OUTPUT_1_ID if model_position == OUTPUT_2_ID else OUTPUT_2_ID


def to_chatml(system: str, user: str) -> str:
    """Writes two messages in the prompt file's markup (the inverse of reading it).

    Args:
        system: The system message's content.
        user: The user message's content.

    Returns:
        ``<|im_start|>system\\n{system}\\n<|im_end|>\\n<|im_start|>user\\n{user}\\n<|im_end|>``;
        for :data:`SYSTEM_PROMPT` and :data:`USER_TEMPLATE`, the benchmark's file byte for byte.
    """
    return f"{_START}system\n{system}\n{_END}\n{_START}user\n{user}\n{_END}"


def fill_user_prompt(instruction: str, output_1: str, output_2: str) -> str:
    """Fills :data:`USER_TEMPLATE` in one pass (inserted texts are not scanned again).

    Args:
        instruction: The instruction both outputs answer.
        output_1: The output identified as ``m``.
        output_2: The output identified as ``M``.

    Returns:
        The user message's content.
    """
    values = {"instruction": instruction, "output_1": output_1, "output_2": output_2}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], USER_TEMPLATE)


def judge_messages(
    instruction: str,
    reference_output: str,
    model_output: str,
    model_position: str = DEFAULT_MODEL_POSITION,
) -> list[dict[str, str]]:
    """The judge's chat messages for one instruction.

    Args:
        instruction: The instruction.
        reference_output: The baseline's output (AlpacaEval 2: GPT-4 turbo's).
        model_output: The evaluated model's output.
        model_position: The model output's identifier: ``"M"`` (default: reference first)
            or ``"m"`` (model first).

    Returns:
        ``[{"role": "system", ...}, {"role": "user", ...}]``.

    Raises:
        ValueError: If ``model_position`` is not ``"m"`` or ``"M"``.
    """
    _check_position(model_position)
    if model_position == OUTPUT_2_ID:
        output_1, output_2 = reference_output, model_output
    else:
        output_1, output_2 = model_output, reference_output
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": fill_user_prompt(instruction, output_1, output_2)},
    ]


def model_position_for(seed: int, question_id: str | int) -> str:
    """A randomized but reproducible order: the model output's identifier for one question.

    The model goes first (``"m"``) when the first byte of
    ``sha256(f"{seed}:{question_id}")`` is odd, else second (``"M"``): about half the
    questions each way, the same on every machine and run for the same seed and id (an int id
    and its decimal string give the same order).

    Args:
        seed: The run's seed.
        question_id: The question's id.

    Returns:
        ``"m"`` or ``"M"``.
    """
    digest = hashlib.sha256(f"{seed}:{question_id}".encode()).digest()
    return OUTPUT_1_ID if digest[0] & 1 else OUTPUT_2_ID


def build_game(
    question_id: str | int,
    instruction: str,
    reference_output: str,
    model_output: str,
    seed: int | None = None,
) -> AlpacaEvalGame:
    """One judge call, in the default order or in an order randomized by ``seed``.

    Args:
        question_id: The instruction's id.
        instruction: The instruction.
        reference_output: The baseline's output.
        model_output: The evaluated model's output.
        seed: None for the default order (reference first); otherwise the seed of
            :func:`model_position_for`.

    Returns:
        The game, with the position it used.
    """
    position = DEFAULT_MODEL_POSITION if seed is None else model_position_for(seed, question_id)
    messages = judge_messages(instruction, reference_output, model_output, position)
    return AlpacaEvalGame(str(question_id), position, messages)


def _entries(top_logprobs: object) -> list[tuple[str, float]]:
    """``(token, logprob)`` pairs from a token->logprob mapping or a list of entries."""
    if isinstance(top_logprobs, Mapping):
        pairs = list(top_logprobs.items())
    elif isinstance(top_logprobs, Iterable) and not isinstance(top_logprobs, (str, bytes)):
        pairs = []
        for entry in top_logprobs:
            if isinstance(entry, Mapping):
                pairs.append((entry.get("token"), entry.get("logprob")))
            else:  # the OpenAI client's objects carry the same fields as attributes
                pairs.append((getattr(entry, "token", None), getattr(entry, "logprob", None)))
    else:
        raise ValueError(f"top_logprobs must be a list or a dict, got {type(top_logprobs)}")
    for token, logprob in pairs:
        if not isinstance(token, str) or isinstance(logprob, bool):
            raise ValueError(f"malformed top_logprobs entry: token={token!r} logprob={logprob!r}")
        if not isinstance(logprob, (int, float)):
            raise ValueError(f"malformed top_logprobs entry: token={token!r} logprob={logprob!r}")
    return [(token, float(logprob)) for token, logprob in pairs]


def _log_mass(logprobs: list[float]) -> float:
    """log(sum(exp(x))), -inf for no terms."""
    top = max(logprobs, default=-math.inf)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(x - top) for x in logprobs))


def preference_from_logprobs(
    top_logprobs: object, model_position: str, exact_tokens: bool = False
) -> float | None:
    """The probability that the model's output is preferred, from the first token's logprobs.

    Args:
        top_logprobs: The first generated token's top logprobs: a list of
            ``{"token": str, "logprob": float}`` (OpenAI / vLLM format; objects with those
            attributes also work) or a dict ``token -> logprob``.
        model_position: The model output's identifier, ``"m"`` or ``"M"``.
        exact_tokens: Match tokens exactly, as alpaca_eval does, instead of after stripping
            surrounding whitespace.

    Returns:
        ``P(model's id) / (P("m") + P("M"))`` in [0, 1]; an id missing from the list counts
        as probability 0. None when neither id is present with non-zero probability or a
        logprob is NaN.

    Raises:
        ValueError: If ``model_position`` is invalid or ``top_logprobs`` is not of the format
            above (a caller's mistake, not the judge's).
    """
    other = _check_position(model_position)
    found: dict[str, list[float]] = {OUTPUT_1_ID: [], OUTPUT_2_ID: []}
    for token, logprob in _entries(top_logprobs):
        key = token if exact_tokens else token.strip()
        if key in found:
            if math.isnan(logprob):
                return None
            found[key].append(logprob)
    mine, theirs = _log_mass(found[model_position]), _log_mass(found[other])
    if mine == theirs == -math.inf:
        return None
    return math.exp(mine - _log_mass([mine, theirs]))


def preference_from_text(text: str, model_position: str) -> float | None:
    """The preference read from the judge's generated text, when no logprobs are available.

    The text must start with an identifier standing alone (leading whitespace, quotes, ``*``,
    ``(`` or ``[`` allowed; ``"M"``, ``"M."``, ``" m\\n"`` read, ``"Model"``, ``"my"`` do not)
    and name no other identifier standing alone anywhere (``"m or M"`` is unreadable).

    Args:
        text: The judge's answer.
        model_position: The model output's identifier, ``"m"`` or ``"M"``.

    Returns:
        1.0 if the text names the model's identifier, 0.0 if the other one, else None.

    Raises:
        ValueError: If ``model_position`` is invalid.
    """
    _check_position(model_position)
    first = _LEADING.match(text)
    if first is None or len(set(_ALONE.findall(text))) != 1:
        return None
    return 1.0 if first.group(1) == model_position else 0.0
