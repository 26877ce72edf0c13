"""Prints a job's runtime_env as JSON: ``ray_jobs/runtime_env.yaml`` plus this shell's settings.

    ray job submit --address http://HEAD:PORT --working-dir . \\
        --runtime-env-json "$(python -m ray_jobs.runtime_env)" -- python -m ray_jobs.synth

``ray job submit`` takes either a YAML file or JSON, not both, and a job does not inherit the
submitting shell's environment. This adds the variables the job needs from here
(``MOAA_MODELS_DIR``, ``MOAA_OUTPUT_ROOT`` by default, made absolute) to the file's
``env_vars``. It imports nothing heavy, so it runs on a login node.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

DEFAULT_FILE = Path(__file__).with_name("runtime_env.yaml")
# path-valued settings the job reads; relative paths would point into the job's working copy
PATH_VARS = ("MOAA_MODELS_DIR", "MOAA_OUTPUT_ROOT")


def build_runtime_env(
    base: Mapping,
    environ: Mapping[str, str],
    pass_env: list[str],
    extra: Mapping[str, str] | None = None,
) -> dict:
    """Returns ``base`` with ``env_vars`` extended by the named variables found in ``environ``.

    Args:
        base: A runtime_env dict (the parsed YAML).
        environ: The environment to take values from (``os.environ``).
        pass_env: Names to copy when set; unset names are skipped. Names in ``PATH_VARS``
            are made absolute, since the job's working directory is a temporary copy.
        extra: ``KEY: value`` pairs set as given (they win over both).

    Raises:
        ValueError: ``base`` asks for a run-time install (pip, conda, uv), which an offline
            cluster cannot do.
    """
    installs = sorted({"pip", "conda", "uv"} & set(base))
    if installs:
        raise ValueError(
            f"runtime_env sets {', '.join(installs)}: the cluster is offline, install the "
            "environment on the nodes instead"
        )
    env = dict(base)
    env_vars = {str(k): str(v) for k, v in (base.get("env_vars") or {}).items()}
    for name in pass_env:
        value = environ.get(name)
        if value:
            env_vars[name] = os.path.abspath(value) if name in PATH_VARS else value
    env_vars.update({str(k): str(v) for k, v in (extra or {}).items()})
    if env_vars:
        env["env_vars"] = env_vars
    return env


def main(argv: list[str] | None = None) -> int:
    import yaml

    p = argparse.ArgumentParser(
        prog="python -m ray_jobs.runtime_env",
        description="Print the runtime_env JSON for `ray job submit --runtime-env-json`.",
    )
    p.add_argument("--file", type=Path, default=DEFAULT_FILE, help=f"default: {DEFAULT_FILE}")
    p.add_argument(
        "--pass-env",
        action="append",
        metavar="NAME",
        help=f"copy this variable from the environment when set (repeatable; default: "
        f"{' '.join(PATH_VARS)})",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="add an env var")
    p.add_argument("--working-dir", help="override working_dir (default: the file's, '.')")
    args = p.parse_args(argv)
    try:
        base = yaml.safe_load(args.file.read_text()) or {}
        bad = [kv for kv in args.set if "=" not in kv]
        if bad:
            raise ValueError(f"--set expects KEY=VALUE, got {bad[0]!r}")
        extra = dict(kv.split("=", 1) for kv in args.set)
        env = build_runtime_env(base, os.environ, args.pass_env or list(PATH_VARS), extra)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"ray_jobs.runtime_env: error: {exc}", file=sys.stderr)
        return 1
    if args.working_dir:
        env["working_dir"] = args.working_dir
    print(json.dumps(env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
