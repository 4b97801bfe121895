"""Fake of Forge's ``backend`` package (dfdcbab6): own minimal re-implementations, same interfaces."""
