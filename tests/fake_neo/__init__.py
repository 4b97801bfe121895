"""A simulated Stable Diffusion WebUI Forge Neo host for tests (see README.md): an overlay of the
simulated Forge (tests/fake_forge) holding only the files Neo changed. Use
``tests.fake_neo.harness.install()`` (or ``with harness.installed():``) and ``uninstall()``.
"""
