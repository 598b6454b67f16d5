"""Logging set-up for runs."""

from __future__ import annotations

import logging


def configure(beam_level: str) -> None:
    """Root at WARNING with a short format; Beam's own loggers at ``beam_level``."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(beam_level.upper())
