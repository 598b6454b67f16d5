"""Beam IO connectors: files, SQL databases (more in later issues)."""
