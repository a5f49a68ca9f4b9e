"""configure_logging: one handler of its own, foreign handlers kept, records go to the current stderr."""

from __future__ import annotations

import io
import logging
import sys

from arrowengine.logging_setup import configure_logging


def test_configure_logging_keeps_foreign_handlers_and_follows_stderr(monkeypatch):
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    try:
        configure_logging("INFO")
        configure_logging("INFO")  # a second call replaces its own handler, it does not stack a second one
        ours = [h for h in root.handlers if type(h).__name__ == "_CurrentStderrHandler"]
        assert len(ours) == 1
        assert foreign in root.handlers
        first, second = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "stderr", first)
        logging.getLogger("arrowengine.test").info("to the first stream")
        first.close()  # e.g. a test runner's capture, closed after its test
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("arrowengine.test").info("to the second stream")
        assert second.getvalue().rstrip().endswith("INFO arrowengine.test: to the second stream")
    finally:
        for handler in list(root.handlers):
            if handler not in saved_handlers:
                root.removeHandler(handler)
        root.setLevel(saved_level)
