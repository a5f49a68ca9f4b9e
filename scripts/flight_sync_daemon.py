#!/usr/bin/env python
"""The Flight sync daemon (DESIGN section 7): ``serve | push | pull | list | daemon``, as ``arrowengine sync ...``.

Examples::

    ARROWENGINE_SYNC_TOKEN=... python scripts/flight_sync_daemon.py serve --port 8815 --dir /srv/adapters
    python scripts/flight_sync_daemon.py daemon --server grpc+tcp://host:8815 --adapter chat --dir node/ --interval 60

The protocol is in docs/federation_protocol.md; this is a thin entry point over ``federation.cli``.
"""

from __future__ import annotations

import sys

from federation.cli import main

if __name__ == "__main__":
    sys.exit(main(["sync", *sys.argv[1:]]))
