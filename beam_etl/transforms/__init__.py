"""Vectorised PTransforms over Arrow batches; each returns ``(output, dead_letters)``."""
