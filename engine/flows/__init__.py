"""The flow document: its format (``format``, the one writer of flow files), parameters
and placeholders (``params``), validation (``validate``), the node registry (``registry``)
and the flows kept by the server (``flowstore``, in the SQL store).

A flow is read, checked and kept here; running it is ``engine.run``'s.

May not import: engine.run, engine.queue, engine.batch, engine.access, engine.service,
engine.testing, engine.config.
"""
