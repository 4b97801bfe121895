"""Fake of Forge's backend/modules (dfdcbab6)."""
