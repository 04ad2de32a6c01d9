"""``dynctl bench``: the YCSB core workloads against dynd (or, for tests/bench, another store).

- ``config``: what one benchmark is: the target (store, addresses, driver factory) and the
  knobs of the command line, checked;
- ``drivers``: what a store must offer (a ``Driver``), dynd's driver, and the loading of a
  driver factory named ``"module:function"``;
- ``engine``: the client processes that run a phase of a workload, and the coordinating
  process that starts them and collects their progress and measurements;
- ``report``: the measurements merged into the report (the ``--json`` document), and its
  tables and plot;
- ``command``: the click command, its options and the live progress line.

The YCSB generators themselves (keys, skew, operation mixes) are in ``dynctl.ycsb``.
"""
