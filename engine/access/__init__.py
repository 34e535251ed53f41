"""Who may do what: users, roles, passwords and API tokens (``users``), kept in the store.

Encrypting stored connections and secrets is the store's (``engine.store.secrets``).

May not import: engine.flows, engine.run, engine.queue, engine.batch, engine.service,
engine.testing, engine.spec, engine.config.
"""
