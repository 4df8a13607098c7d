"""``python -m slimkit.backends.worker JOB.json``: measure one backend in this fresh process."""

import sys

from slimkit.backends.measure import worker_main

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m slimkit.backends.worker JOB.json")
    sys.exit(worker_main(sys.argv[1]))
