"""``python -m ledgerflow.cli``, as ``python -m ledgerflow`` and the ``ledgerflow`` script."""

import sys

from ledgerflow.cli import main

sys.exit(main())
