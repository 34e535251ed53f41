"""The demo world of ``flowmill demo``: the ERP data and export files (``data``), a
stand-in web shop (``shop``) and a mail catcher (``mail``). It stands alone, so the
samples' tests and the benchmarks can build it without a Flowmill installation.

May not import: designer.web, designer.cli, engine, nodes, servers.
"""
