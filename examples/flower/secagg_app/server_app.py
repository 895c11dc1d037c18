"""The ServerApp: secagg's untrusted aggregator (it never holds a secret key)."""

from training.flower.deploy import server_app

app = server_app()
