"""Running the app on uvicorn: ``serve`` (blocking, for the CLI) and ``ServerThread`` (tests, benchmarks).

Both bind ``127.0.0.1`` unless told otherwise and warn loudly when a server listens beyond this machine
without API keys. uvicorn handles SIGINT / SIGTERM: it stops accepting, waits up to ``shutdown_grace_s``
for open requests, then the app's lifespan stops the schedulers (cancelling what is still running).
"""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from starlette.applications import Starlette

from arrowengine.serve.app import build_app
from arrowengine.serve.config import ServeConfig
from arrowengine.serve.errors import ServeConfigError

__all__ = ["ServerThread", "serve"]

logger = logging.getLogger(__name__)


def _uvicorn_config(config: ServeConfig) -> uvicorn.Config:
    if not config.is_loopback and not config.api_keys:
        logger.warning("serve: LISTENING ON %s WITHOUT API KEYS: anyone who can reach this port can use the models; "
                       "pass --api-key-file (or set ARROWENGINE_API_KEYS) or bind 127.0.0.1", config.host)
    return uvicorn.Config(build_app(config), host=config.host, port=config.port, log_config=None,
                          access_log=False, timeout_graceful_shutdown=int(config.shutdown_grace_s) or None,
                          lifespan="on")


def serve(config: ServeConfig) -> None:
    """Serve until interrupted (SIGINT / SIGTERM)."""
    server = uvicorn.Server(_uvicorn_config(config))
    logger.info("serve: models from %s on http://%s:%d (Ollama /api/*, OpenAI /v1/*, /metrics)",
                config.models_dir, config.host, config.port)
    server.run()


class ServerThread:
    """A real uvicorn server on a background thread; ``port`` is the bound port (use ``port=0`` for any).

    ``with ServerThread(config) as server: ... server.url ...`` starts it and stops it gracefully.
    """

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.server = uvicorn.Server(_uvicorn_config(config))
        self.server.install_signal_handlers = lambda: None  # only the main thread may install them
        self._thread = threading.Thread(target=self.server.run, name="arrowengine-serve-uvicorn", daemon=True)

    @property
    def app(self) -> Starlette:
        """The ASGI app (its ``state.serve`` holds the registry, metrics, ...)."""
        return self.server.config.app

    def start(self, timeout: float = 30.0) -> ServerThread:
        """Start serving; returns once the socket is bound."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServeConfigError(f"the server did not start on {self.config.host}:{self.config.port} within "
                                       f"{timeout} s (port in use?); see the log")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.config.host}:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown: finish open requests (up to ``shutdown_grace_s``), stop schedulers."""
        self.server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
