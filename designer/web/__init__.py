"""The web app: ``app.create_app`` wires the blueprints (``api`` with ``api_setup``,
``auth``, ``pages``, ``hooks``), the error handlers and the live Socket.IO namespace
(``live``); ``routing`` declares the API routes and their OpenAPI document; ``webserver``
runs the app in its own process; ``nodedocs`` renders the node reference. Templates and
static files live beside ``app.py``, where Flask looks for them.

May not import: designer.cli, designer.demo.
"""
