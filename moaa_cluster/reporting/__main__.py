"""``python -m moaa_cluster.reporting RUN_DIR``: the same as ``moaa report RUN_DIR``."""

import sys

from moaa_cluster.reporting.command import main

sys.exit(main())
