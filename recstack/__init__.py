"""recstack: the shared kernel (settings, schemas, lake, clock, logging) and the composition root.

The kernel modules (`settings`, `schemas`, `lake`, `clock`, `logs`, `artifacts`) import no stage
package. Only the composition root (`recstack.cli`, `recstack.demo`, `recstack.stack`) imports the
stages' entrypoints.
"""

__version__ = "0.1.0"
