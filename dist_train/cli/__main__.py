"""``python -m dist_train.cli``: the same as ``dist-train``."""

import sys

from dist_train.cli.main import main

sys.exit(main())
