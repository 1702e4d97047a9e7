"""The composition root: the ``recstack`` command (``app.cli``), the native stack runner
(``app.stack``), the demo, the benchmarks and the experiments (``app.experiments``). It is the
only layer that imports several stages; nothing below imports it (docs/architecture.md)."""
