"""The Flower driver: the round engine as a Flower ServerApp (the untrusted aggregator) and ClientApp (clients and
the key holder), on Flower's simulation runtime or deployed with ``flower-superlink``/``flower-supernode``.

Reuses the services' PKI and node workloads (:mod:`training.services`); round logic is the engine's.
"""
