"""Fake ``modules.models`` (AUTOMATIC1111 1.10.1): only ``sd3`` is mirrored."""
