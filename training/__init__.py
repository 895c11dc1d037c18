"""Federated fine-tuning of language models over :mod:`secagg` with :mod:`privacy`, in layers.

Bottom to top; each layer imports only the layers below it (``tests/layers.py`` checks it):

* :mod:`training.errors`, :mod:`training.ledgers` — the named errors and where each client's ledger lives;
* :mod:`training.workload` — what a client runs: corpora, tokenizer, partitioning, model loading, the local
  DP-SGD trainer, generation, platform profiles;
* :mod:`training.engine` — the sans-I/O round engine and the aggregation rules (:mod:`training.engine.rules`);
* :mod:`training.config`, :mod:`training.deployment` — the run file;
* the drivers: :mod:`training.inprocess` (the context manager and the simulated run), :mod:`training.services`
  (our gRPC services with their PKI), :mod:`training.flower` (Flower's ServerApp and ClientApp);
* :mod:`training.cli` — the ``secagg`` command.
"""
