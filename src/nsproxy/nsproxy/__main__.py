"""``python -m nsproxy`` is the ``nsproxy`` command."""

import sys

from nsproxy.cli import main

sys.exit(main())
