"""Fake of modules/textual_inversion (1.10.1)."""
