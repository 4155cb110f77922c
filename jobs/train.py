"""Train on a Ray cluster:

    ray job submit --working-dir . -- python jobs/train.py SHARDS OUT --preset tiny --workers 2

Takes the arguments of `slc train`.
"""

import sys

from slc.apps.cli import app

if __name__ == "__main__":
    app(["train", *sys.argv[1:]], prog_name="jobs/train.py")
