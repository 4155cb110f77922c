"""Label audio archives on a Ray cluster:

    ray job submit --working-dir . -- python jobs/label.py s3://bucket/audio --bundle BUNDLE --out s3://bucket/labels

Takes the arguments of `slc label`.
"""

import sys

from slc.apps.cli import app

if __name__ == "__main__":
    app(["label", *sys.argv[1:]], prog_name="jobs/label.py")
