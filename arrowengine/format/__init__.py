"""The Parquet weight format: schema, writer, zero-copy reader and integrity checks (DESIGN section 3)."""

from arrowengine.format.integrity import VerifyReport, verify_weights
from arrowengine.format.reader import TensorInfo, WeightFile, ZeroCopyFallbackWarning, resolve_weights_path
from arrowengine.format.writer import WriteReport, write_weights

__all__ = [
    "TensorInfo",
    "VerifyReport",
    "WeightFile",
    "WriteReport",
    "ZeroCopyFallbackWarning",
    "resolve_weights_path",
    "verify_weights",
    "write_weights",
]
