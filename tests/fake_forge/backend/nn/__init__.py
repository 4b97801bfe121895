"""Fake of Forge's backend/nn (dfdcbab6)."""
