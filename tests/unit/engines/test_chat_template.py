"""System messages for chat templates without a system role (``engines/chat_template.py``).

Detection runs real tokenizers: the packaged checkpoints, and a copy of the SmolLM2 tokenizer
whose template is replaced by a Gemma-2-style one. Those tests skip only when the prepared
model directory is missing. The backend tests talk to a tiny HTTP server on loopback (the
OpenAI backend) and to a stand-in deployment handle (the Serve LLM backend).
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from moaa_cluster.engines import chat_template
from moaa_cluster.engines.backends import OpenAIBackend, ServeLLMBackend
from moaa_cluster.engines.chat_template import fold_system, system_mode, template_accepts_system
from moaa_cluster.engines.spec import ModelSpec, spec_from_dict
from moaa_cluster.errors import ConfigError
from moaa_cluster.moa.prompts import inject_responses
from moaa_cluster.models.store import GEMMA_CHAT_TEMPLATE, default_models_dir

MODELS_DIR = default_models_dir()
SMOLLM2 = MODELS_DIR / "smollm2-135m-instruct"
GEMMA3 = MODELS_DIR / "gemma-3-270m"
CONF = Path(__file__).resolve().parents[3] / "conf"


def _needs(path: Path):
    return pytest.mark.skipif(
        not (path / "tokenizer_config.json").exists(),
        reason=f"prepared model dir {path} is missing (run `make models`)",
    )


# Gemma-2's turn format and its two refusals, as its tokenizer_config.json template has them:
# a leading system message raises, and so does any break in user/model alternation (which is
# why a system message later in the conversation must not reach it either).
GEMMA2_STYLE_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Renders every turn but skips system messages without a word.
DROPS_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

# Renders every message, system included.
ALL_ROLES_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
)


def _tokenizer_copy(tmp_path: Path, template: str) -> Path:
    """The packaged SmolLM2 tokenizer (no weights) with its chat template replaced."""
    target = tmp_path / "tok"
    target.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(SMOLLM2 / name, target / name)
    (target / "chat_template.jinja").write_text(template)
    return target


@functools.cache  # Gemma-3's 262k-token vocabulary takes seconds to load
def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _render(tokenizer, messages: list[dict], template: str | None = None) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )


ROW_SYSTEM = "You are a careful assistant. Answer in English."
QUESTION = "Name three prime numbers."
ANSWERS = ["2, 3 and 5.", "The first three primes are 2, 3, 5.\n", "7, 11, 13"]


# --------------------------------------------------------------------------- fold_system


def test_fold_puts_system_text_and_a_blank_line_before_the_first_user_turn():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert fold_system(messages) == [{"role": "user", "content": "S\n\nU"}]
    # the caller's messages are not touched
    assert messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]


def test_fold_leaves_later_turns_and_other_keys_alone():
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1", "name": "alice"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    assert fold_system(messages) == [
        {"role": "user", "content": "S\n\nU1", "name": "alice"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]


def test_fold_joins_several_system_messages_and_places_a_late_one_on_the_next_user_turn():
    messages = [
        {"role": "system", "content": "S1"},
        {"role": "system", "content": "S2"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "system", "content": "S3"},
        {"role": "user", "content": "U2"},
    ]
    assert [m["content"] for m in fold_system(messages)] == ["S1\n\nS2\n\nU1", "A1", "S3\n\nU2"]
    assert all(m["role"] != "system" for m in fold_system(messages))


def test_fold_without_a_system_message_returns_the_messages_unchanged():
    messages = [{"role": "user", "content": " U "}, {"role": "assistant", "content": "A"}]
    assert fold_system(messages) is messages


def test_fold_refuses_what_it_cannot_place():
    with pytest.raises(ValueError, match="no user turn follows"):
        fold_system([{"role": "user", "content": "U"}, {"role": "system", "content": "S"}])
    with pytest.raises(TypeError, match="list"):
        fold_system(
            [
                {"role": "system", "content": "S"},
                {"role": "user", "content": [{"type": "text", "text": "U"}]},
            ]
        )


# --------------------------------------------------------------------------- byte for byte


CONVERSATIONS = {
    "k1": inject_responses([{"role": "user", "content": QUESTION}], ANSWERS),
    "k1_with_row_system": inject_responses(
        [{"role": "system", "content": ROW_SYSTEM}, {"role": "user", "content": QUESTION}],
        ANSWERS,
    ),
    "two_turns": [
        {"role": "system", "content": ROW_SYSTEM},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "2, 3, 5."},
        {"role": "user", "content": "And three more?"},
    ],
    "trailing_whitespace": [
        {"role": "system", "content": "Be brief.\n"},
        {"role": "user", "content": f"{QUESTION} \n"},
    ],
}


@_needs(GEMMA3)
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_fold_matches_the_packaged_gemma3_template_byte_for_byte(name):
    messages = CONVERSATIONS[name]
    tokenizer = _tokenizer(GEMMA3)
    assert tokenizer.chat_template == GEMMA_CHAT_TEMPLATE  # the template store.py ships
    native = _render(tokenizer, messages)  # the template folds the system text itself
    folded = fold_system(messages)
    assert _render(tokenizer, folded) == native
    # and a Gemma-2 engine, which refuses the original, renders the folded one identically
    with pytest.raises(Exception, match="System role not supported"):
        _render(tokenizer, messages, GEMMA2_STYLE_TEMPLATE)
    assert _render(tokenizer, folded, GEMMA2_STYLE_TEMPLATE) == native
    assert native.startswith(f"<bos><start_of_turn>user\n{messages[0]['content']}\n\n")


# --------------------------------------------------------------------------- detection


@_needs(SMOLLM2)
def test_a_template_that_raises_on_system_is_detected_as_fold(tmp_path):
    path = _tokenizer_copy(tmp_path, GEMMA2_STYLE_TEMPLATE)
    with pytest.raises(Exception, match="System role not supported"):
        _render(
            _tokenizer(path), [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
        )
    assert template_accepts_system(str(path)) is False
    assert system_mode(ModelSpec(name="gemma-2-like", path=str(path))) == "fold"


@_needs(SMOLLM2)
def test_a_template_that_drops_system_silently_is_detected_as_fold(tmp_path):
    path = _tokenizer_copy(tmp_path, DROPS_SYSTEM_TEMPLATE)
    rendered = _render(
        _tokenizer(path), [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    )
    assert rendered == "<|user|>U\n<|assistant|>"  # renders fine, system text gone
    assert system_mode(ModelSpec(name="drops", path=str(path))) == "fold"


@_needs(SMOLLM2)
def test_packaged_smollm2_takes_system_messages_natively():
    assert system_mode(ModelSpec(name="smollm2", path=str(SMOLLM2))) == "native"
    rendered = _render(
        _tokenizer(SMOLLM2), [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    )
    assert rendered.startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU")


@_needs(GEMMA3)
def test_packaged_gemma3_is_native_because_its_template_folds_itself():
    # Sending the system message is right here: the template puts it where fold_system would
    # (see the byte-for-byte test), so folding again on our side would change nothing.
    assert system_mode(ModelSpec(name="gemma3", path=str(GEMMA3))) == "native"


@_needs(SMOLLM2)
def test_the_spec_chat_template_override_is_what_gets_probed(tmp_path):
    # SmolLM2's own template accepts system messages; the override refuses them
    inline = ModelSpec(name="m", path=str(SMOLLM2), chat_template=GEMMA2_STYLE_TEMPLATE)
    assert system_mode(inline) == "fold"
    template_file = tmp_path / "gemma2.jinja"
    template_file.write_text(DROPS_SYSTEM_TEMPLATE)
    as_file = ModelSpec(name="m", path=str(SMOLLM2), chat_template=str(template_file))
    assert system_mode(as_file) == "fold"
    # an engine argument wins over chat_template in serve_llm, so it does here too
    via_engine = ModelSpec(
        name="m",
        path=str(SMOLLM2),
        chat_template=GEMMA2_STYLE_TEMPLATE,
        engine_kwargs={"chat_template": ALL_ROLES_TEMPLATE},
    )
    assert system_mode(via_engine) == "native"


def test_declared_modes_are_followed_without_loading_anything(tmp_path, monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("probed a template although the mode was declared")

    monkeypatch.setattr(chat_template, "template_accepts_system", no_probe)
    empty = str(tmp_path)  # a directory with no tokenizer: loading it would fail
    assert system_mode(ModelSpec(name="m", path=empty, system_role="fold")) == "fold"
    assert system_mode(ModelSpec(name="m", path=empty, system_role="native")) == "native"
    # auto with nothing local to read: the remote server owns its template
    remote = ModelSpec(name="m", backend="openai", base_url="http://127.0.0.1:1/v1")
    assert system_mode(remote) == "native"
    elsewhere = ModelSpec(name="m", path=str(tmp_path / "not-on-this-machine"))
    assert system_mode(elsewhere) == "native"


def test_auto_with_an_unloadable_tokenizer_says_so(tmp_path):
    with pytest.raises(ConfigError, match="cannot load the tokenizer"):
        system_mode(ModelSpec(name="m", path=str(tmp_path)))


# --------------------------------------------------------------------------- spec and configs


@pytest.mark.parametrize("value", ["Fold", "none", "", None])
def test_spec_rejects_an_unknown_system_role(value):
    spec = ModelSpec(name="m", path="/models/m", system_role=value)
    with pytest.raises(ConfigError) as info:
        spec.validate(check_files=False)
    message = str(info.value)
    assert "system_role" in message and "\n" not in message
    assert message.startswith("model m: system_role must be one of ('auto', 'native', 'fold')")
    # an openai spec is checked too, though it returns early from the rest of validate()
    remote = ModelSpec(name="m", backend="openai", base_url="http://h/v1", system_role=value)
    with pytest.raises(ConfigError, match="system_role"):
        remote.validate()


def test_spec_accepts_the_three_modes_from_config():
    for value in ("auto", "native", "fold"):
        spec = spec_from_dict("m", {"path": "/models/m", "system_role": value})
        spec.validate(check_files=False)
        assert spec.system_role == value
    assert ModelSpec(name="m").system_role == "auto"


def test_paper_gemma2_models_fold_and_the_rest_detect():
    roles = {}
    for path in sorted((CONF / "model").glob("*.yaml")):
        roles[path.stem] = OmegaConf.load(path).get("system_role", "auto")
    assert roles["gemma_2_9b_it"] == roles["gemma_2_27b_it"] == "fold"
    assert {k for k, v in roles.items() if v != "auto"} == {"gemma_2_9b_it", "gemma_2_27b_it"}


def test_paper_small_scale_aggregator_is_built_with_fold(compose):
    from moaa_cluster import build

    _, specs, _ = build.mixture(compose("synth", ["mixture=paper_small_scale"]).mixture)
    assert specs["gemma_2_9b_it"].system_role == "fold"
    assert specs["llama_3_1_8b_instruct"].system_role == "auto"


# --------------------------------------------------------------------------- backends


class _ChatServer:
    """An OpenAI-style chat endpoint on loopback that records every request body."""

    def __init__(self):
        self.bodies: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # http.server's method name
                length = int(self.headers["Content-Length"])
                owner.bodies.append(json.loads(self.rfile.read(length)))
                payload = json.dumps(
                    {
                        "choices": [
                            {"message": {"content": "ok"}, "finish_reason": "stop", "index": 0}
                        ],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 1},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def chat_server():
    server = _ChatServer()
    yield server
    server.close()


def _ask(backend: OpenAIBackend, messages: list[dict]):
    async def go():
        try:
            return await backend.chat(messages, {"max_tokens": 4, "seed": 1})
        finally:
            await backend.close()

    return asyncio.run(go())


K1 = CONVERSATIONS["k1_with_row_system"]


def test_openai_backend_folds_when_configured(chat_server):
    spec = ModelSpec(name="m", backend="openai", base_url=chat_server.base_url, system_role="fold")
    completion = _ask(OpenAIBackend(spec), K1)
    sent = chat_server.bodies[-1]["messages"]
    assert [m["role"] for m in sent] == ["user"]
    assert sent[0]["content"].startswith(K1[0]["content"] + "\n\n")
    assert sent[0]["content"] == f"{K1[0]['content']}\n\n{QUESTION}"
    assert completion.system_folded is True
    assert (completion.text, completion.prompt_tokens) == ("ok", 7)
    # nothing to fold: sent as is and recorded as not folded
    plain = [{"role": "user", "content": QUESTION}]
    again = _ask(OpenAIBackend(spec), plain)
    assert chat_server.bodies[-1]["messages"] == plain
    assert again.system_folded is False


def test_openai_backend_native_sends_the_system_message_unchanged(chat_server):
    spec = ModelSpec(
        name="m", backend="openai", base_url=chat_server.base_url, system_role="native"
    )
    completion = _ask(OpenAIBackend(spec), K1)
    assert chat_server.bodies[-1]["messages"] == K1
    assert completion.system_folded is False


@_needs(SMOLLM2)
def test_openai_backend_auto_folds_for_a_template_without_system_role(chat_server, tmp_path):
    path = _tokenizer_copy(tmp_path, GEMMA2_STYLE_TEMPLATE)
    spec = ModelSpec(name="m", backend="openai", base_url=chat_server.base_url, path=str(path))
    backend = OpenAIBackend(spec)
    assert backend.system_role == "fold"  # decided when the backend is built
    completion = _ask(backend, K1)
    assert [m["role"] for m in chat_server.bodies[-1]["messages"]] == ["user"]
    assert completion.system_folded is True


class _FakeStream:
    def __init__(self, response: dict):
        self.response = response

    async def __anext__(self):
        return self.response


class _FakeHandle:
    """Stands in for a Serve LLM deployment handle; records the requests it is given."""

    def __init__(self):
        self.requests = []
        self.chat = self

    def options(self, **kwargs):
        return self

    def remote(self, request):
        self.requests.append(request)
        return _FakeStream(
            {
                "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            }
        )


@pytest.mark.parametrize("role, folded", [("fold", True), ("native", False)])
def test_serve_llm_backend_folds_before_building_the_request(monkeypatch, role, folded):
    from ray import serve

    handle = _FakeHandle()
    monkeypatch.setattr(serve, "get_deployment_handle", lambda *args, **kwargs: handle)
    backend = ServeLLMBackend(ModelSpec(name="m", path="/models/m", system_role=role))
    completion = asyncio.run(backend.chat(K1, {"max_tokens": 4}))
    sent = [dict(m) for m in handle.requests[-1].messages]
    assert sent == (fold_system(K1) if folded else K1)
    assert completion.system_folded is folded


def test_openai_backend_http_error_is_an_inference_error_and_refused_is_transient():
    """A server's error status is an ``InferenceError`` naming it; a refused connection
    (nothing listening) is a transient error the rows retry through."""
    import socket

    from moaa_cluster.engines.backends import InferenceError
    from moaa_cluster.engines.faults import is_transient

    def busy(handler):
        handler.send_response(503)
        handler.send_header("Content-Length", "4")
        handler.end_headers()
        handler.wfile.write(b"busy")

    server = _ChatServer()  # its handler class is its own: replacing do_POST touches no other
    server.server.RequestHandlerClass.do_POST = busy
    try:
        spec = ModelSpec(name="m", backend="openai", base_url=server.base_url, system_role="native")
        with pytest.raises(InferenceError, match="HTTP 503: busy") as err:
            _ask(OpenAIBackend(spec), K1)
        assert is_transient(err.value)
    finally:
        server.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    spec = ModelSpec(name="m", backend="openai", base_url=url, system_role="native")
    with pytest.raises(Exception) as refused:
        _ask(OpenAIBackend(spec), K1)
    assert is_transient(refused.value), repr(refused.value)
