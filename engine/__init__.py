"""Flowmill's engine: flows, running them, the job queue, the batch server and the store.

Rooms, from the ground up (each ``__init__`` says what it is for and what it may not
import; tests/engine/test_boundaries.py holds them to it):

- ``engine.store``   the run store interface, its implementations, the factory that
  chooses one, the tables and their migrations, encryption of stored secrets
- ``engine.access``  users, roles, passwords and API tokens
- ``engine.flows``   the flow document: format, params, validation, node registry, the
  flows kept by the server
- ``engine.run``     running one flow: executor, streams, expressions, events, recorder
- ``engine.queue``   jobs, schedules, calendars and the scheduler lease
- ``engine.batch``   the batch server: loop, worker processes, Celery executor, request
  files, trigger listeners, file drops, status files

Beside the rooms stand the public plugin API, stable in name and path (``engine.spec``,
the node contract; ``engine.errors``; ``engine.testing``) and the cross-cutting
``engine.config`` and ``engine.clock``: these import no room. ``engine.service`` is the one
service layer over the rooms; only ``engine.batch`` stands above it.

engine imports nothing from nodes, servers or designer.
"""
