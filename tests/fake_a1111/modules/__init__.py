"""Fake ``modules`` package of AUTOMATIC1111 WebUI 1.10.1 (see tests/fake_a1111/__init__.py).

The real webui has no ``modules/__init__.py``; this one only makes the fake a regular package so
that it can never merge with another ``modules`` namespace directory on ``sys.path``.
"""
