"""The ``flowmill`` command line: ``commands`` parses the arguments and dispatches to the
subcommands of ``connections``, ``jobs``, ``users`` and ``demo``; every one calls the
service layer. ``python -m designer.cli`` runs it too.

Flask comes only through ``designer.web``, and only for ``serve`` and ``web``.

May not import: nodes, flask, flask_socketio.
"""

from designer.cli.commands import main

__all__ = ["main"]  # the console script ``flowmill = "designer.cli:main"``
