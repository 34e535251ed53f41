"""Flowmill's designer: the one place where engine, nodes and servers are put together.

Rooms (each ``__init__`` says what it is for and what it may not import;
tests/engine/test_boundaries.py holds them to it):

- ``designer.web``   the Flask + Flask-SocketIO app: REST API, editor and dashboard pages,
  login, webhooks, live updates, its templates and static files, the web server process
- ``designer.cli``   the ``flowmill`` command line
- ``designer.demo``  the demo world: ERP data, a stand-in web shop, a mail catcher
"""
