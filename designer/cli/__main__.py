"""``python -m designer.cli``: the same as the ``flowmill`` command."""

import sys

from designer.cli.commands import main

sys.exit(main())
