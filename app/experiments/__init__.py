"""Experiments around the running stack: scaling and chaos (``loadlab``), drift and retraining
(``drift``), online A/B tests (``online``). Each is one bounded command that writes a report
folder under ``$RECSTACK_HOME/reports/`` (see :mod:`app.experiments.report`)."""
