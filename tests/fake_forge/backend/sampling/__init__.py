"""Fake of Forge's backend/sampling (dfdcbab6)."""
