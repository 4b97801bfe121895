"""Fake of Forge's ``modules`` package (dfdcbab6): own minimal re-implementations, same interfaces."""
