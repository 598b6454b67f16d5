"""Operational plumbing: dead letters, run context, metrics, progress."""
