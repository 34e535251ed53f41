"""Keeping things: the run store interface (``interface``), its SQL and in-memory
implementations (``sql``, ``memory``), the factory that chooses one (``factory``), the SQL
tables and their Alembic migrations (``tables``, ``migrations/``) and the encryption of
stored connections and secrets (``secrets``).

``interface`` never imports its implementations; ``factory.open_store`` chooses. The store
is the ground floor of the rooms: of engine it uses ``engine.errors`` alone.

May not import: engine.flows, engine.run, engine.queue, engine.batch, engine.access,
engine.service, engine.testing, engine.spec, engine.config, engine.clock.
"""
