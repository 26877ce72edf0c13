"""``python -m moaa_cluster.cli <task> ...``: the same as the ``moaa`` command."""

import sys

from moaa_cluster.cli import main

sys.exit(main())
