"""`ray job submit --working-dir . -- python -m ray_jobs.synth cluster=ray_address [overrides]`"""

import sys

from moaa_cluster.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
