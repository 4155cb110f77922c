"""Export a checkpoint to a bundle on a Ray cluster's head:

    ray job submit --working-dir . -- python jobs/export.py RUN/best BUNDLE

Takes the arguments of `slc export`.
"""

import sys

from slc.apps.cli import app

if __name__ == "__main__":
    app(["export", *sys.argv[1:]], prog_name="jobs/export.py")
