"""Fake of Forge's backend/diffusion_engine (dfdcbab6)."""
