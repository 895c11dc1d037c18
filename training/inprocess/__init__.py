"""The in-process driver: every party in one process, as a context manager around the user's loop
(:mod:`.session`) and as the simulated cross-cloud run of ``secagg run``/``demo`` (:mod:`.simulation`).

Round logic is the engine's (:mod:`training.engine`); this driver only pumps its events and effects.
"""
