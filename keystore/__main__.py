"""``python -m keystore``: the keystore command."""

import sys

from keystore.cli import main

sys.exit(main())
