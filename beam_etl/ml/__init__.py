"""Models behind the transforms (no Beam imports here)."""
