"""Checksums of stored tensors, verified on demand: ``arrowengine verify``, or ``WeightFile.open(path, verify=True)``
(off by default, since hashing touches every page and so defeats lazy zero-copy opening)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import xxhash

from arrowengine.errors import ChecksumMismatchError
from arrowengine.format.index import index_from_footer, read_small_columns
from arrowengine.format.reader import WeightFile

__all__ = ["VerifyReport", "check_checksums", "verify_weights"]

logger = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_weights`."""

    path: str
    tensors_checked: int = 0
    bytes_checked: int = 0
    mismatches: list[str] = field(default_factory=list)  # "name[chunk]" of every chunk that failed

    @property
    def ok(self) -> bool:
        """True when every chunk matched its checksum."""
        return not self.mismatches


def verify_weights(path: str | os.PathLike[str], *, strict: bool = False) -> VerifyReport:
    """Hash every stored tensor chunk (xxh64) and compare with the ``checksum`` column.

    With ``strict=True`` the first mismatch raises :class:`ChecksumMismatchError` naming the tensor.
    """
    weights = WeightFile.open(path)
    report = VerifyReport(str(weights.path))
    version = weights.schema_version
    footer_index = index_from_footer(weights.metadata, weights.num_rows, version)
    if footer_index is not None and footer_index != read_small_columns(weights.path, weights.parquet, version):
        message = (f"{weights.path}: the footer index disagrees with the index columns; the file was modified "
                   f"after writing: re-convert it")
        report.mismatches.append("footer index")
        logger.error(message)
        if strict:
            raise ChecksumMismatchError(message)
    return check_checksums(weights, strict=strict, report=report)


def check_checksums(weights: WeightFile, *, strict: bool = False, report: VerifyReport | None = None
                    ) -> VerifyReport:
    """Hash every tensor chunk of the open ``weights`` against its stored checksum (``WeightFile.open(verify=True)``
    calls this); mismatches are logged and collected, or raised as :class:`ChecksumMismatchError` when ``strict``."""
    report = report if report is not None else VerifyReport(str(weights.path))
    for name in list(weights.keys()):
        if name in weights.aliases:
            continue
        info = weights.info(name)
        blobs = ("data", "scales", "zero_points") if info.is_quantized else ("data",)
        for chunk, expected in enumerate(info.checksums):
            digest = xxhash.xxh64()
            for column in blobs:
                data = weights.raw_bytes(name, chunk, column)
                digest.update(data)
                report.bytes_checked += len(data)
            actual = digest.intdigest()
            if actual != expected:
                label = f"{name}[{chunk}]"
                report.mismatches.append(label)
                message = (f"{weights.path}: tensor {label} (row group {info.row_group}) hashes to {actual:#018x}, "
                           f"stored checksum is {expected:#018x}; the file is damaged: run 'arrowengine verify "
                           f"{weights.path}' to list every damaged tensor, then restore the file or re-convert "
                           f"the model")
                logger.error(message)
                if strict:
                    raise ChecksumMismatchError(message)
        report.tensors_checked += 1
    return report
