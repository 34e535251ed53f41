"""The batch server: the scheduler loop (``server``), the local worker processes
(``workers``), the Celery executor (``celery``), request files, trigger listeners, file-drop
rules and status files.

It stands on the service layer (``engine.service``) and the job queue (``engine.queue``),
and is the top floor of engine: no other part of engine imports it.

May not import: engine.access, engine.testing, engine.spec.
"""
