"""The sans-I/O federation engine: one round logic, driven by the in-process, gRPC and Flower drivers.

No module here imports ``threading``, ``time``, ``socket``, ``grpc``, ``flwr`` or ``torch`` (a test checks it):
time comes in as an argument, I/O goes out as effects. The aggregation rules live in :mod:`training.engine.rules`.
"""

from training.engine.core import (Mail, ModelReply, OpenFailed, Persist, RoundDone, RoundEngine, Task,
                                  ToKeyholder)
from training.engine.rounds import RoundPolicy, RoundRecord
from training.engine.state import ServerState

__all__ = ["RoundEngine", "RoundPolicy", "RoundRecord", "ServerState", "Task", "ModelReply", "Mail",
           "ToKeyholder", "Persist", "RoundDone", "OpenFailed"]
