"""Logging set-up for the CLI and scripts; the library itself only ever calls ``logging.getLogger``."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings

__all__ = ["THIRD_PARTY_WARNINGS", "JsonFormatter", "configure_logging", "level_from_verbosity",
           "silence_third_party_warnings"]

# Warnings raised inside other packages about their own upcoming changes: a user of the CLI cannot act on them
# (only their maintainers, or ours, can), so the CLI hides them. Keyed by the module that issues them; our own
# code's warnings are never filtered.
THIRD_PARTY_WARNINGS: tuple[tuple[type[Warning], str], ...] = tuple(
    (category, module)
    for module in (r"transformers(\..*)?", r"torch(\..*)?", r"huggingface_hub(\..*)?", r"accelerate(\..*)?",
                   r"sentence_transformers(\..*)?", r"onnxruntime(\..*)?", r"ctranslate2(\..*)?",
                   r"lancedb(\..*)?", r"pyarrow(\..*)?", r"tqdm(\..*)?", r"gguf(\..*)?")
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning)
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def level_from_verbosity(verbose: int, default: str = "WARNING") -> str:
    """The log level for ``-v`` counted ``verbose`` times: 0 -> ``default``, 1 -> INFO, 2 or more -> DEBUG."""
    if verbose <= 0:
        return default.upper()
    return "INFO" if verbose == 1 else "DEBUG"


class _CurrentStderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is at the time of each record.

    Binding the stream once would keep writing to a replaced (and possibly closed) stderr, as happens when the
    CLI runs in-process under a test runner or a notebook that swaps ``sys.stderr``.
    """

    @property  # type: ignore[override]
    def stream(self):
        """``sys.stderr`` now (replaces StreamHandler's attribute)."""
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ assigns it; the current stderr always wins
        pass


def configure_logging(level: str = "WARNING", *, json_output: bool = False) -> None:
    """Send log records to stderr, as text or JSON lines; replaces the handler set by an earlier call.

    Handlers installed by others (a test runner's capture, an application's own) are left in place.
    While a tqdm progress bar is on screen, run the work inside ``tqdm.contrib.logging.logging_redirect_tqdm()``
    so these lines are printed above the bar instead of through it (the CLI does this for every command).
    """
    handler = _CurrentStderrHandler()
    handler.setFormatter(JsonFormatter() if json_output else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _CurrentStderrHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def silence_third_party_warnings() -> None:
    """Ignore the FutureWarning / DeprecationWarning classes of :data:`THIRD_PARTY_WARNINGS`, by issuing module."""
    for category, module in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", category=category, module=module)
