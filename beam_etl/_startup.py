"""Start-up of the command line ``python -m beam_etl.run`` (runs started by the API included).

A run imports about 2,400 modules (Beam with its GCP and AWS clients, pyarrow, pandas), which
create a few million objects that live until the process ends. With the cyclic garbage collector
on, CPython walks those objects again and again while they are being created, and once more
when the interpreter shuts down: about 0.6 s of every run on a 2-core machine (BENCHMARKS.md,
"Start-up and column pruning"). So when a module runs as a program, the collector is paused while it imports, and
what the imports created is then moved to the permanent generation with ``gc.freeze()``. Objects
made after that, by the pipeline, are collected as usual. Imported as a library, nothing changes.

Usage, at the top of a ``__main__``-capable module, before its heavy imports::

    from beam_etl import _startup

    _IMPORTING = _startup.begin_imports(__name__)
    import apache_beam as beam  # noqa: E402
    ...
    _startup.end_imports(_IMPORTING)
"""

from __future__ import annotations

import gc
import os

DISABLE_ENV = "BEAM_ETL_NO_GC_FREEZE"  # set to 1 to keep CPython's default collector behaviour


def begin_imports(module_name: str) -> bool:
    """Pauses the collector when ``module_name`` is ``"__main__"``; returns whether it did."""
    if module_name != "__main__" or os.environ.get(DISABLE_ENV, "") not in ("", "0") or not gc.isenabled():
        return False
    gc.disable()
    return True


def end_imports(paused: bool) -> None:
    """Freezes what the imports created and turns the collector back on (if ``begin_imports`` paused it)."""
    if paused:
        gc.freeze()
        gc.enable()
