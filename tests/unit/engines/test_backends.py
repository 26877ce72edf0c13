"""How an OpenAI-style chat response becomes a Completion (pure)."""

import pytest

from moaa_cluster.engines.backends import SAMPLING_KEYS, _completion, _sampling


def _resp(logprobs=None) -> dict:
    choice = {"message": {"content": "m"}, "finish_reason": "length"}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {"choices": [choice], "usage": {"prompt_tokens": 900, "completion_tokens": 1}}


def test_the_first_tokens_alternatives_are_kept_when_asked_for():
    first = {
        "token": "m",
        "logprob": -0.1,
        "top_logprobs": [
            {"token": "m", "logprob": -0.1, "bytes": [109]},
            {"token": "M", "logprob": -2.4},
        ],
    }
    c = _completion(_resp({"content": [first]}), "judge", 0.5)
    assert c.top_logprobs == [[{"token": "m", "logprob": -0.1}, {"token": "M", "logprob": -2.4}]]
    assert (c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason) == (
        "m",
        900,
        1,
        "length",
    )


@pytest.mark.parametrize("logprobs", [None, {"content": None}, {"content": []}])
def test_no_logprobs_asked_or_given_reads_as_none(logprobs):
    assert _completion(_resp(logprobs), "judge", 0.5).top_logprobs is None


def test_logprob_settings_pass_through_and_unknown_keys_are_refused():
    assert {"logprobs", "top_logprobs"} <= set(SAMPLING_KEYS)
    assert _sampling({"logprobs": True, "top_logprobs": 5, "max_tokens": 1, "seed": None}) == {
        "logprobs": True,
        "top_logprobs": 5,
        "max_tokens": 1,
    }
    with pytest.raises(ValueError, match="unknown sampling keys"):
        _sampling({"logprob": True})
