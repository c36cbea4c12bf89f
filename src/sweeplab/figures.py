"""Matplotlib for pictures written to files: loaded on first use, headless, quiet.

    plt = pyplot()      # matplotlib.pyplot with the Agg backend

Imported by the run pictures, the sweep's Optuna plots and the reports. Matplotlib costs about
half a second to import, so it is loaded only when a picture is drawn.
"""

from __future__ import annotations

import functools
import logging
import threading
from types import ModuleType

# held while matplotlib's modules are imported: a thread that imports them while another does can
# meet one half-initialised ("No module named 'matplotlib._layoutgrid'")
IMPORTING_MATPLOTLIB = threading.RLock()


@functools.cache
def pyplot() -> ModuleType:
    """matplotlib.pyplot, drawing into files (Agg), without its font-cache chatter."""
    with IMPORTING_MATPLOTLIB:
        import matplotlib  # only when a picture is drawn: seconds other commands need not wait

        matplotlib.use("Agg")
        logging.getLogger("matplotlib").setLevel(logging.WARNING)
        import matplotlib.pyplot as plt

    return plt
