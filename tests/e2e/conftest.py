"""End-to-end pipeline tests (`make test-e2e`, run by CI): real stack, several minutes."""

from tests.integration.conftest import models_dir  # noqa: F401  (shared session fixture)
