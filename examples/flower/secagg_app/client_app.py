"""The ClientApp: a secagg client (node config ``client-id=<i>``) or the key holder (``role='keyholder'``)."""

from training.flower.deploy import client_app

app = client_app()
