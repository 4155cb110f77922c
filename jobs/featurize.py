"""Featurize a corpus on a Ray cluster:

    ray job submit --working-dir . -- python jobs/featurize.py CORPUS OUT [--labels ...]

Takes the arguments of `slc ingest`.
"""

import sys

from slc.apps.cli import app

if __name__ == "__main__":
    app(["ingest", *sys.argv[1:]], prog_name="jobs/featurize.py")
