"""Forge Neo's backend/misc (only ``eps.py`` is simulated; Forge's fake has no such package)."""
