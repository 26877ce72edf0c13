"""`ray job submit --working-dir . -- python -m ray_jobs.prefs cluster=ray_address [overrides]`"""

import sys

from moaa_cluster.cli import main

if __name__ == "__main__":
    sys.exit(main(["prefs", *sys.argv[1:]]))
