"""secagg on Flower: the apps come from :mod:`training.flower.deploy`."""
