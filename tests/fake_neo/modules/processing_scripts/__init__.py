"""Forge Neo's built-in processing scripts (``modules/processing_scripts``): only MaHiRo and RescaleCFG are
simulated. Neo's ``load_scripts`` lists these after every extension's scripts, so their
``process_before_every_sampling`` runs after DeGu's (the harness keeps that order)."""
