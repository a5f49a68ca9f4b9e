"""The LLM clients behind one protocol: Ollama, any OpenAI-compatible endpoint, and the embedded server.

Every client turns the transport's failures (no connection, timeout, HTTP 5xx / 429) into
:class:`LLMTransportError`, which :func:`call_with_retry` retries with exponential backoff; a refusal of the
request itself (HTTP 4xx) is :class:`LLMRequestError` and is never retried. The official packages are imported
when a client is made, with a message naming what to install.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from memory.consolidation.config import LLMConfig
from memory.consolidation.errors import LLMRequestError, LLMTransportError, LLMUnavailableError
from memory.consolidation.validation import answer_format

__all__ = ["EmbeddedLLM", "LLMClient", "OllamaLLM", "OpenAILLM", "call_with_retry", "open_llm"]

logger = logging.getLogger(__name__)
T = TypeVar("T")
_DEFAULT_OLLAMA = "http://127.0.0.1:11434"


@runtime_checkable
class LLMClient(Protocol):
    """What the consolidator needs from an LLM: one chat completion, and a name for the run log."""

    name: str

    def chat(self, messages: list[dict[str, str]]) -> str:
        """The assistant's reply to ``messages``; raise :class:`LLMTransportError` on transport failures."""
        ...


def call_with_retry(fn: Callable[[], T], retries: int, backoff_s: float,
                    on_failure: Callable[[LLMTransportError], None] | None = None) -> T:
    """Run ``fn``; on :class:`LLMTransportError` wait ``backoff_s * 2**attempt`` and try again, ``retries`` times.

    Raises :class:`LLMUnavailableError` when every attempt failed; any other error passes straight through.
    """
    for attempt in range(retries + 1):
        try:
            return fn()
        except LLMTransportError as exc:
            if on_failure is not None:
                on_failure(exc)
            if attempt == retries:
                raise LLMUnavailableError(f"the LLM did not answer after {retries + 1} attempts ({exc}); start it "
                                          "or set memory.consolidation.llm (provider, host, base_url)") from exc
            delay = backoff_s * 2**attempt
            logger.warning("LLM transport error (%s); retry %d/%d in %.1f s", exc, attempt + 1, retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _import(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as exc:
        raise LLMRequestError(f"the {name!r} package is needed for this LLM provider; pip install {name}") from exc


class OllamaLLM:
    """An Ollama server (or arrowengine's Ollama endpoint) through the official ``ollama`` client."""

    def __init__(self, model: str, host: str | None = None, *, timeout_s: float = 120.0, max_tokens: int = 96,
                 temperature: float = 0.0, json_format: bool = False) -> None:
        ollama = _import("ollama")
        self.host = host or os.environ.get("OLLAMA_HOST") or _DEFAULT_OLLAMA
        self.model = model
        self.name = f"ollama:{model}@{self.host}"
        self._client = ollama.Client(host=self.host, timeout=timeout_s)
        self._errors = ollama.ResponseError
        self._options = {"temperature": temperature, "num_predict": max_tokens}
        self._format = answer_format(max_tokens) if json_format else None

    def chat(self, messages: list[dict[str, str]]) -> str:
        """One non-streaming ``/api/chat`` call."""
        import httpx

        kwargs: dict[str, Any] = {"format": self._format} if self._format is not None else {}
        try:
            reply = self._client.chat(model=self.model, messages=messages, options=self._options, stream=False,
                                      **kwargs)
        except self._errors as exc:
            if exc.status_code >= 500 or exc.status_code in (408, 429):
                raise LLMTransportError(f"{self.name}: HTTP {exc.status_code} {exc.error}") from exc
            raise LLMRequestError(f"{self.name} refused the request: HTTP {exc.status_code} {exc.error}; check "
                                  "the model name (ollama list) and options") from exc
        except (ConnectionError, httpx.TransportError) as exc:
            raise LLMTransportError(f"{self.name} unreachable: {exc}") from exc
        return reply.message.content or ""


class OpenAILLM:
    """Any OpenAI-compatible chat-completions endpoint through the official ``openai`` client."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, *,
                 timeout_s: float = 120.0, max_tokens: int = 96, temperature: float = 0.0) -> None:
        openai = _import("openai")
        self.model = model
        self.name = f"openai:{model}@{base_url or 'api.openai.com'}"
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key or "unused", timeout=timeout_s,
                                     max_retries=0)  # retries are ours, on transport errors only
        self._openai = openai
        self._max_tokens, self._temperature = max_tokens, temperature

    def chat(self, messages: list[dict[str, str]]) -> str:
        """One non-streaming ``/v1/chat/completions`` call."""
        o = self._openai
        try:
            reply = self._client.chat.completions.create(model=self.model, messages=messages,
                                                         max_tokens=self._max_tokens, temperature=self._temperature)
        except (o.APIConnectionError, o.APITimeoutError, o.InternalServerError, o.RateLimitError) as exc:
            raise LLMTransportError(f"{self.name}: {exc}") from exc
        except o.APIStatusError as exc:
            raise LLMRequestError(f"{self.name} refused the request: HTTP {exc.status_code} {exc.message}; check "
                                  "the model name, base_url and API key") from exc
        return reply.choices[0].message.content or "" if reply.choices else ""


class EmbeddedLLM:
    """arrowengine's own server (``arrowengine serve``) on 127.0.0.1, any free port, started on first use.

    Driven through :class:`OllamaLLM` (the official ``ollama`` client); ``close()`` stops the server.
    """

    def __init__(self, model: str, models_dir: Path | None = None, *, threads: int | None = None,
                 timeout_s: float = 120.0, max_tokens: int = 96, temperature: float = 0.0,
                 json_format: bool = True) -> None:
        if models_dir is None:
            from arrowengine.config import load_config, resolve_models_dir

            models_dir = resolve_models_dir(load_config())
        self.models_dir = Path(models_dir)
        self.model = model
        self.name = f"embedded:{model}"
        self._threads, self._timeout, self._max_tokens, self._temperature = threads, timeout_s, max_tokens, temperature
        self._json_format = json_format
        self._server: Any = None
        self._client: OllamaLLM | None = None

    def _start(self) -> OllamaLLM:
        if not (self.models_dir / self.model / "weights.parquet").is_file():
            raise LLMTransportError(f"embedded LLM: model {self.model!r} is not in {self.models_dir}; run "
                                    "python scripts/fetch_models.py or set memory.consolidation.llm.model")
        from arrowengine.serve import ServeConfig, ServerThread

        options = {"threads": self._threads} if self._threads else {}
        self._server = ServerThread(ServeConfig(host="127.0.0.1", port=0, models_dir=self.models_dir,
                                                llm_options=options)).start()
        logger.info("embedded LLM server for %s on %s", self.model, self._server.url)
        return OllamaLLM(self.model, self._server.url, timeout_s=self._timeout, max_tokens=self._max_tokens,
                         temperature=self._temperature, json_format=self._json_format)

    @property
    def url(self) -> str | None:
        """The running server's URL (None before the first call)."""
        return None if self._server is None else self._server.url

    def chat(self, messages: list[dict[str, str]]) -> str:
        """Start the server if needed, then one ``/api/chat`` call through the ``ollama`` client."""
        if self._client is None:
            self._client = self._start()
        return self._client.chat(messages)

    def close(self) -> None:
        """Stop the server (if it was started)."""
        if self._server is not None:
            self._server.stop()
            self._server, self._client = None, None


def open_llm(config: LLMConfig) -> LLMClient | None:
    """The client ``config`` names (None for ``extractive``: principles are taken from the sources)."""
    common = {"timeout_s": config.timeout_s, "max_tokens": config.max_tokens, "temperature": config.temperature}
    if config.provider == "extractive":
        return None
    if config.provider == "ollama":
        return OllamaLLM(config.model, config.host, json_format=config.json_format, **common)
    if config.provider == "openai":
        return OpenAILLM(config.model, config.base_url, os.environ.get(config.api_key_env), **common)
    return EmbeddedLLM(config.model, config.models_dir, threads=config.server_threads,
                       json_format=config.json_format, **common)
