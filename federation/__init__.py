"""LoRA cards and delta sync between nodes over Arrow Flight DoExchange (DESIGN section 7).

A :class:`LoRACard` is a peft LoRA adapter in the arrowengine weight format plus its metadata; ``encode_delta``
/ ``apply_delta`` move between versions with dense, int8, sparse or top-k + int8 encodings (error feedback
keeps what lossy ones leave out); :class:`SyncServer` and :class:`SyncClient` speak the Flight protocol of
``docs/federation_protocol.md``; :class:`SyncDaemon` syncs periodically. Depends on ``arrowengine`` and
``quant`` only.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CardMeta",
    "ClientConfig",
    "DaemonConfig",
    "Delta",
    "DeltaConfig",
    "ErrorFeedback",
    "LoRACard",
    "ServerConfig",
    "SyncClient",
    "SyncDaemon",
    "SyncLog",
    "SyncResult",
    "SyncServer",
    "apply_card",
    "apply_delta",
    "encode_delta",
    "remove_card",
]

# public name -> defining module; imported on first use (pyarrow.flight and peft stay unloaded until needed)
_EXPORTS = {
    "CardMeta": "federation.card", "LoRACard": "federation.card",
    "Delta": "federation.delta", "DeltaConfig": "federation.delta", "ErrorFeedback": "federation.delta",
    "apply_delta": "federation.delta", "encode_delta": "federation.delta",
    "apply_card": "federation.adapt", "remove_card": "federation.adapt",
    "ServerConfig": "federation.server", "SyncServer": "federation.server",
    "ClientConfig": "federation.client", "SyncClient": "federation.client", "SyncResult": "federation.client",
    "SyncLog": "federation.synclog",
    "DaemonConfig": "federation.daemon", "SyncDaemon": "federation.daemon",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'federation' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
