"""Where a conversion or quantization may write, checked before any work, and the final swap into place.

Two rules protect user data: an existing destination is refused unless the caller passes ``force`` (the CLI's
``--force``), and the destination may never be the source, contain it or lie inside it, ``force`` or not
(paths are resolved first, so symlinks and ``..`` do not hide it). Writers build the new model in a sibling
temporary directory and call :func:`replace_directory` only once it is complete, so a failed run never leaves a
half-written model and an existing one is replaced only by a finished one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from arrowengine.errors import DestinationExistsError, DestinationIsSourceError

__all__ = ["check_destination", "replace_directory"]

logger = logging.getLogger(__name__)

# What a model directory written by arrowengine holds; --force only ever replaces such a directory (or an empty
# one), so a mistyped destination such as "." or "~" is never deleted.
_MODEL_MARKERS = ("weights.parquet", "model_card.json")
_FLAG = "--force (force=True in Python)"


def _is_model_dir(path: Path) -> bool:
    return any((path / marker).is_file() for marker in _MODEL_MARKERS) or not any(path.iterdir())


def check_destination(dst: str | os.PathLike[str], *, sources: Iterable[str | os.PathLike[str]] = (),
                      force: bool = False) -> Path:
    """``dst`` as given, after checking it may be written; raises before anything is touched.

    Raises:
        DestinationIsSourceError: ``dst`` resolves to a source, or one lies inside the other (even with force).
        DestinationExistsError: ``dst`` exists and ``force`` is false; or it is a file, or a non-empty
            directory that is not a model directory (never replaced, even with force).
    """
    dst = Path(dst)
    target = dst.expanduser().resolve()
    for src in sources:
        origin = Path(src).expanduser().resolve()
        if target == origin or target.is_relative_to(origin) or origin.is_relative_to(target):
            relation = ("is the source" if target == origin else
                        "lies inside the source" if target.is_relative_to(origin) else "contains the source")
            raise DestinationIsSourceError(
                f"destination {dst} ({target}) {relation} {src} ({origin}); writing it would destroy the "
                f"source, even with {_FLAG}: choose another destination such as models/NAME-new"
            )
    if not os.path.lexists(dst):
        blocker = next((parent for parent in target.parents if parent.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise DestinationExistsError(f"destination {dst} cannot be created: {blocker} is a file, not a "
                                         f"directory; choose another destination")
        return dst
    if not target.is_dir():
        raise DestinationExistsError(f"destination {dst} exists and is a file, not a model directory; remove it "
                                     f"or choose another destination ({_FLAG} only replaces model directories)")
    if not force:
        raise DestinationExistsError(f"destination {dst} already exists; nothing was written. Pass {_FLAG} to "
                                     f"replace it, or choose another destination")
    if not _is_model_dir(target):
        raise DestinationExistsError(
            f"destination {dst} is a non-empty directory without weights.parquet or model_card.json; {_FLAG} "
            f"only replaces model directories: remove it yourself or choose another destination"
        )
    return dst


def replace_directory(staged: Path, dst: Path, *, force: bool = False) -> Path:
    """Move the finished directory ``staged`` to ``dst``, replacing an existing ``dst`` only when ``force``.

    The old directory is first renamed aside and deleted only after the new one is in place, so at every
    instant ``dst`` is either the complete old model or the complete new one. ``dst`` is checked again here:
    it may have appeared since the check at the start of the run.
    """
    check_destination(dst, force=force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(dst):
        os.replace(staged, dst)
        return dst
    aside = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
    old = aside / dst.name
    os.replace(dst, old)
    try:
        os.replace(staged, dst)
    except BaseException:
        os.replace(old, dst)  # put the old model back before reporting the failure
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    logger.info("replaced %s", dst)
    return dst
