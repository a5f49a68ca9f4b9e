"""LanceDB plumbing: connect, open with crash recovery, and commit with retry on write conflicts.

Lance commits are optimistic: a writer that loses the race for a version number gets a commit conflict.
Appends rebase inside Lance; anything left over is retried here with jittered backoff so no write is lost.
A manifest left half-written by a crash makes the whole table unopenable; recovery moves the newest
manifests aside (kept in ``_quarantine/``, never deleted) until the latest valid version opens.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import socket
import time
import urllib.parse
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import lancedb

from memory.errors import (
    CommitConflictError,
    StoreCorruptError,
    StorePathError,
    StorePathIsFileError,
    StoreUnreachableError,
)

__all__ = ["commit_with_retry", "connect", "open_table", "table_names"]

logger = logging.getLogger(__name__)
T = TypeVar("T")
_MAX_RECOVERED_VERSIONS = 8


# an unreachable endpoint must fail in seconds, not after object_store's default minutes of retries
_URI_OPTIONS = {"connect_timeout": "5s", "timeout": "30s", "client_max_retries": "2", "client_retry_timeout": "15"}


def _check_endpoint(uri: str, endpoint: str) -> None:
    """Fail in seconds when a configured endpoint accepts no connection (object_store would retry for ~30 s)."""
    parsed = urllib.parse.urlsplit(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=5).close()
    except OSError as exc:
        raise StoreUnreachableError(
            f"memory store URI {uri!r} cannot be reached (endpoint {endpoint} refuses connections: "
            f"{exc.strerror or exc}); check the endpoint (AWS_ENDPOINT_URL) and credentials (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY), or use a local directory"
        ) from exc


def _connect_uri(uri: str, read_consistency_s: float) -> Any:
    """A LanceDB connection on an object-store URI; credentials and endpoint come from the usual environment
    variables (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...). One listing proves the store is reachable."""
    options = dict(_URI_OPTIONS)
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT")
    if endpoint:
        options["aws_endpoint"] = endpoint
        options["allow_http"] = str(endpoint.startswith("http://")).lower()
        _check_endpoint(uri, endpoint)
    try:
        db = lancedb.connect(uri, read_consistency_interval=timedelta(seconds=read_consistency_s),
                             storage_options=options)
        table_names(db)
    except Exception as exc:  # lancedb raises OSError, RuntimeError or ValueError depending on the layer
        raise StoreUnreachableError(
            f"memory store URI {uri!r} cannot be reached ({str(exc).splitlines()[0][:200]}); check the endpoint "
            "(AWS_ENDPOINT_URL) and credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), or use a local directory"
        ) from exc
    return db


def connect(path: Path | str, read_consistency_s: float) -> Any:
    """Create ``path`` if needed, check it is writable, and open a LanceDB connection on it (or on a URI)."""
    if isinstance(path, str):
        return _connect_uri(path, read_consistency_s)
    if path.exists() and not path.is_dir():
        raise StorePathIsFileError(
            f"memory store path {str(path)!r} is an existing file, not a directory; give a directory "
            "(a new path, or the directory of an existing store)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorePathError(
            f"memory store path {str(path)!r} cannot be created ({exc.strerror}); choose a writable directory"
        ) from exc
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise StorePathError(f"memory store path {str(path)!r} is not a writable directory; choose another path")
    return lancedb.connect(str(path), read_consistency_interval=timedelta(seconds=read_consistency_s))


def _is_conflict(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "conflict" in text or "concurrent" in text


def commit_with_retry(fn: Callable[[], T], what: str, retries: int) -> T:
    """Run the write ``fn``; on a commit conflict wait (jittered exponential backoff) and run it again."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except (RuntimeError, OSError, ValueError) as exc:
            if not _is_conflict(exc):
                raise
            if attempt == retries:
                raise CommitConflictError(
                    f"{what} still conflicted with concurrent writers after {retries} retries ({exc}); "
                    "raise MemoryConfig.commit_retries or reduce concurrent writers"
                ) from exc
            delay = min(0.5, 0.005 * 2**attempt) * (0.5 + random.random())
            logger.debug("%s: commit conflict (attempt %d), retrying in %.3f s", what, attempt + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _manifests(table_dir: Path) -> list[Path]:
    """Manifest files, newest version first (Lance V2 naming counts down from u64::MAX; V1 counts up)."""
    files = [p for p in (table_dir / "_versions").glob("*.manifest") if p.stem.isdigit()]
    if any(int(p.stem) > 2**63 for p in files):
        return sorted(files, key=lambda p: int(p.stem))
    return sorted(files, key=lambda p: int(p.stem), reverse=True)


def table_names(db: Any) -> list[str]:
    """Every table name in ``db``, following ``list_tables``' pages (``table_names()`` is deprecated)."""
    names: list[str] = []
    token = None
    while True:
        page = db.list_tables(page_token=token)
        names.extend(page.tables)
        token = page.page_token
        if not token:
            return names


def open_table(db: Any, name: str, root: Path | str) -> Any | None:
    """Open table ``name`` (None if it does not exist), recovering from a half-written latest version.

    Recovery moves local manifest files; on an object-store URI an unreadable table is reported, not repaired.
    """
    if name not in table_names(db):
        return None
    if isinstance(root, str):
        try:
            table = db.open_table(name)
            table.count_rows()
        except (RuntimeError, OSError, ValueError) as exc:
            raise StoreCorruptError(f"memory table {name!r} at {root!r} cannot be opened ({exc}); restore it "
                                    "from a backup") from exc
        return table
    table_dir = root / f"{name}.lance"
    quarantined: list[Path] = []
    while True:
        try:
            table = db.open_table(name)
            table.count_rows()  # forces the manifest to be read
        except (RuntimeError, OSError, ValueError) as exc:
            manifests = _manifests(table_dir)
            if len(quarantined) >= _MAX_RECOVERED_VERSIONS or len(manifests) <= 1:
                raise StoreCorruptError(
                    f"memory table {str(table_dir)!r} cannot be opened at any valid version ({exc}); "
                    f"moved aside: {[p.name for p in quarantined]}; restore from a backup"
                ) from exc
            bad = manifests[0]
            dest = table_dir / "_quarantine" / bad.name
            dest.parent.mkdir(exist_ok=True)
            shutil.move(str(bad), str(dest))
            hint = table_dir / "_versions" / "latest_version_hint.json"
            hint.unlink(missing_ok=True)  # may point at the version just moved aside
            quarantined.append(dest)
            logger.warning(
                "memory table %s: latest version unreadable (%s); moved %s to %s and reopening the previous one",
                table_dir, exc, bad.name, dest.parent,
            )
            continue
        if quarantined:
            logger.warning("memory table %s recovered at version %d", table_dir, table.version)
        return table
