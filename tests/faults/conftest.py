"""Fault-injection tests: real runs killed or broken on purpose (see issue #6)."""

from tests.integration.conftest import models_dir  # noqa: F401  (shared session fixture)
