"""``CardStore``: the sync server's adapters on disk, one directory per adapter, versions swapped in atomically.

Layout: ``<root>/<adapter>/v<version:08d>.parquet`` (a :class:`LoRACard` file) and ``<root>/<adapter>/CURRENT``
(the current version number). A new version is written in full first (``write_weights`` writes a temporary file
and renames it), then ``CURRENT`` is replaced by rename, then the in-memory card is swapped: a crash at any
point leaves the previous version current.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from federation.card import LoRACard
from federation.errors import CardError

__all__ = ["CardStore"]

logger = logging.getLogger(__name__)

_CURRENT = "CURRENT"


class CardStore:
    """Current cards of every adapter under ``root`` (created if missing); thread-safe."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._cards: dict[str, LoRACard] = {}
        for pointer in sorted(self.root.glob(f"*/{_CURRENT}")):
            version = int(pointer.read_text().strip())
            self._cards[pointer.parent.name] = LoRACard.load(self._path(pointer.parent.name, version))
        logger.info("card store %s: %d adapters", self.root, len(self._cards))

    def _path(self, adapter: str, version: int) -> Path:
        return self.root / adapter / f"v{version:08d}.parquet"

    def adapters(self) -> list[str]:
        """Names of the stored adapters."""
        with self._lock:
            return sorted(self._cards)

    def current(self, adapter: str) -> LoRACard:
        """The current card of ``adapter``."""
        with self._lock:
            card = self._cards.get(adapter)
        if card is None:
            raise CardError(f"no adapter {adapter!r} on this server; push it first ('arrowengine sync push')")
        return card

    def get(self, adapter: str, version: int | None = None) -> LoRACard:
        """Version ``version`` of ``adapter`` (default: the current one), if it is still on disk."""
        card = self.current(adapter)
        if version is None or version == card.meta.version:
            return card
        path = self._path(adapter, version)
        if not path.is_file():
            raise CardError(f"adapter {adapter!r} has no version {version} (current: {card.meta.version})")
        return LoRACard.load(path)

    def commit(self, card: LoRACard) -> None:
        """Make ``card`` the current version of its adapter: file, then pointer, then memory."""
        adapter, version = card.meta.adapter, card.meta.version
        path = card.save(self._path(adapter, version))
        pointer = self.root / adapter / _CURRENT
        tmp = pointer.with_name(f".{_CURRENT}.tmp-{os.getpid()}-{threading.get_ident()}")
        tmp.write_text(f"{version}\n")
        os.replace(tmp, pointer)
        with self._lock:
            self._cards[adapter] = LoRACard.load(path)
        logger.info("adapter %s: version %d is current (%s)", adapter, version, path.name)
