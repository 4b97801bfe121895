"""Fake of Forge's backend/patcher (dfdcbab6)."""
