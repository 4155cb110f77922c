"""Train on a Ray cluster:

    ray job submit --working-dir . -- python jobs/train.py SHARDS OUT --preset small --workers 4 --gpu

Takes the arguments of `slc train`. `--gpu` asks for one GPU per worker, which
is what makes an autoscaling cluster start GPU nodes (the run waits for them);
without it the run trains on CPU unless the cluster has GPUs when it starts.
"""

import sys

from slc.apps.cli import app

if __name__ == "__main__":
    app(["train", *sys.argv[1:]], prog_name="jobs/train.py")
