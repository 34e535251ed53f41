"""The job queue and its timetable: jobs (one request to run a pinned flow version), the
recurring schedules with their calendars and time conditions, and the scheduler lease,
all kept in the store. The service layer and the batch server (``engine.batch``) use them.

Of engine.run it uses only the events that jobs publish (``engine.run.events``).

May not import: engine.flows, engine.batch, engine.access, engine.service, engine.testing,
engine.spec, engine.config.
"""
