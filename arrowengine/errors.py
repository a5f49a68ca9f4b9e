"""The one exception hierarchy of arrowengine.

Every error the engine raises derives from :class:`EngineError` and also from the builtin a caller would
naturally catch (``MissingColumnError`` is a ``KeyError``, ``WeightFileNotFoundError`` a ``FileNotFoundError``),
so ``except EngineError`` catches everything of ours and ``except ValueError`` keeps working for the rest.
Messages name the file, the tensor or row group, and what to do about it.

This module imports nothing else from the project, so every package (``quant`` included) may import it.
Subsystems keep their own subclasses in their own ``errors`` module, each rooted here.
"""

from __future__ import annotations

__all__ = [
    "ChecksumMismatchError",
    "ConfigError",
    "ConversionError",
    "CorruptFileError",
    "DestinationExistsError",
    "DestinationIsSourceError",
    "DeviceUnavailableError",
    "EngineError",
    "InputTypeError",
    "MissingColumnError",
    "ModelConfigError",
    "ModelTypeError",
    "NotParquetError",
    "OptionalDependencyError",
    "SchemaError",
    "TensorNotFoundError",
    "TensorSizeError",
    "UnknownDtypeError",
    "UnsupportedSchemaVersionError",
    "UsageError",
    "WeightFileNotFoundError",
    "WeightPathIsDirectoryError",
]


class EngineError(Exception):
    """Root of every error raised by arrowengine and its sibling packages."""

    def __reduce__(self):  # keep the message when the error crosses a process boundary
        return (self.__class__, self.args)


class WeightFileNotFoundError(EngineError, FileNotFoundError):
    """A weight file or model directory does not exist."""


class WeightPathIsDirectoryError(EngineError, IsADirectoryError):
    """A weight file was to be written where a directory already is."""


class NotParquetError(EngineError, ValueError):
    """The file is not a Parquet file (bad magic bytes or unreadable footer)."""


class CorruptFileError(EngineError, ValueError):
    """The file is Parquet but damaged: truncated, a page header that does not parse, sizes that disagree."""


class SchemaError(EngineError, ValueError):
    """The Parquet schema or metadata is not an arrowengine weight schema."""


class MissingColumnError(SchemaError, KeyError):
    """A column required by the weight schema is absent."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it readable
        return str(self.args[0]) if self.args else ""


class UnsupportedSchemaVersionError(SchemaError):
    """The file declares a schema version this build cannot read."""


class UnknownDtypeError(SchemaError):
    """A tensor declares a dtype name this build does not know."""


class TensorNotFoundError(EngineError, KeyError):
    """A weight file has no tensor of the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it readable
        return str(self.args[0]) if self.args else ""


class TensorSizeError(CorruptFileError):
    """A tensor's stored byte count does not match its shape times its dtype size."""


class ChecksumMismatchError(CorruptFileError):
    """A tensor's bytes do not hash to the checksum stored beside them."""


class ModelConfigError(EngineError, FileNotFoundError):
    """A model directory lacks ``config.json`` (or it is unreadable), so no architecture can be built."""


class InputTypeError(EngineError, TypeError):
    """An input of the wrong type for an encoder or engine call (a number where text is expected)."""


class ModelTypeError(EngineError, ValueError):
    """A model directory holds another kind of model than the component needs (a Whisper model given to
    ``TextEncoder``); the message names the model type found and the component to use instead."""


class ConversionError(EngineError, ValueError):
    """A source model could not be converted into the arrowengine model store."""


class ConfigError(EngineError, ValueError):
    """An invalid configuration value in strict mode, or an unreadable configuration file."""


class DeviceUnavailableError(EngineError, RuntimeError):
    """A requested device cannot run here and fallback was disabled."""


class OptionalDependencyError(EngineError, ImportError):
    """An optional package is needed for this feature; the message says what to install."""


class DestinationExistsError(EngineError, FileExistsError):
    """The destination of a conversion or quantization exists and ``force`` was not given (nothing touched)."""


class DestinationIsSourceError(EngineError, ValueError):
    """The destination is the source, or lies inside it, or contains it: writing it would destroy the source."""


class UsageError(EngineError, ValueError):
    """A command or call asks for something that cannot be done as given (no input, options that conflict)."""
