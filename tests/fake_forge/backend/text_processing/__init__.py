"""Fake of Forge's backend/text_processing (dfdcbab6)."""
