"""DeGu (Decoupled Guidance): the host-agnostic core.

Pure torch: nothing in this package imports a WebUI module (``modules``, ``backend``, ``ldm``,
``sgm``). Host adapters live in ``lib_degu/hosts`` and are imported only by ``scripts/degu.py``.
"""

__version__ = "0.1.0"
