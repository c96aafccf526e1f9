"""The orchestrator (``fastframe serve``): many agencies in, DataBatch frames out to a sink.

One file per job:

* ``server``      — ``Orchestrator``: the listener, the event loop, the lifecycle;
* ``connection``  — one client connection as a state machine: which state,
  which deadline, which buffer it owns;
* ``admission``   — the connection cap and the byte budget for frame buffers;
* ``downstream``  — what a client frame becomes (``HeaderPolicy``, ``wrap_frame``);
* ``sink_writer`` — ``SinkWriter``: the thread that owns the sink (group commit, or pipelined);
* ``tls``         — mutual TLS contexts, the agency a client certificate names.
"""
from __future__ import annotations

from .downstream import HeaderPolicy
from .server import Counters, Orchestrator
from .sink_writer import SinkWriter

__all__ = ["Orchestrator", "HeaderPolicy", "SinkWriter", "Counters"]
