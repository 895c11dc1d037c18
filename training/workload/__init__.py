"""What one client runs, with no knowledge of rounds or schemes: text, tokens, shards, models, the local trainer.

Imports only :mod:`training.errors` and :mod:`training.ledgers` from this project (``tests/layers.py``).
"""
