"""A small simulated Stable Diffusion WebUI Forge host (commit dfdcbab6) for tests (see README.md).

``backend`` and ``modules`` here are top-level packages, as inside Forge. Importing this package
changes nothing: call ``tests.fake_forge.harness.install()`` (or ``with harness.installed():``) so
that ``import backend...`` / ``from modules import ...`` resolve to the fakes, and ``uninstall()``
afterwards. Import the fake's modules only as ``backend.*`` / ``modules.*``, never as
``tests.fake_forge.modules.*`` (a second copy would have its own state).
"""
