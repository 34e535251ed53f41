"""Running one flow: the executor, record streams between nodes (``streams``), the
expression language (``expressions``), the event bus (``events``), events between
processes (``eventlink``) and the recorder that writes what the bus reports into the run
store (``recorder``).

Of the store it uses the interface only (``engine.store.interface``), never an
implementation: whoever runs a flow hands the store in.

May not import: engine.queue, engine.batch, engine.access, engine.service, engine.testing,
engine.config, engine.clock.
"""
