"""Configuration: one dataclass per subsystem, loaded from YAML, overridden by environment variables.

Precedence (lowest first): dataclass defaults, ``arrowengine.yaml`` (path from the argument, else
``$ARROWENGINE_CONFIG``, else ``./arrowengine.yaml`` when it exists), then ``ARROWENGINE_<SECTION>_<KEY>``
environment variables. An invalid value is logged as an error naming the key, the value and what is allowed,
and the default is used instead, unless ``strict: true`` is set (then :class:`ConfigError` is raised).

Fields declare their limits in ``metadata``: ``choices`` (allowed values) or ``range`` (inclusive bounds).
Other packages define their own section dataclasses the same way and read them with :func:`load_section`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from arrowengine.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_FILE",
    "EngineConfig",
    "LoggingConfig",
    "ModelsConfig",
    "RuntimeConfig",
    "load_config",
    "load_section",
    "read_config_file",
    "resolve_models_dir",
    "resolve_verify_checksums",
]

logger = logging.getLogger(__name__)

CONFIG_ENV = "ARROWENGINE_CONFIG"
DEFAULT_CONFIG_FILE = "arrowengine.yaml"
_ENV_PREFIX = "ARROWENGINE_"
T = TypeVar("T")

DEVICES = ("auto", "cpu", "cuda", "rocm", "mps", "xpu", "vulkan", "arm")


@dataclass(frozen=True)
class RuntimeConfig:
    """How models run: device, dtype, CPU threads, backend, batch size and the native kernels."""

    device: str = field(default="auto", metadata={"choices": DEVICES})
    dtype: str = field(default="float32", metadata={"choices": ("float32", "float16", "bfloat16")})
    threads: int = field(default=0, metadata={"range": (0, 1024)})  # 0: torch's default
    backend: str = field(default="eager", metadata={"choices": ("eager", "compile", "onnxruntime", "ipex")})
    batch_size: int = field(default=32, metadata={"range": (1, 4096)})
    native_kernels: bool = True  # build and use the C kernels of arrowengine.runtime.native where they run
    cache_dir: str = ""  # compiled kernels; empty: ~/.cache/arrowengine
    # hash every tensor against its stored checksum when a model is loaded; off by default because it reads
    # every page of the file, which defeats zero-copy opening (arrowengine verify checks on demand instead)
    verify_checksums: bool = False


@dataclass(frozen=True)
class ModelsConfig:
    """Where the converted-model store lives and which text encoder is the default.

    ``dir`` is resolved by :func:`resolve_models_dir`: ``~`` expanded, a relative path taken from the current
    directory. Every component (CLI, encoders' defaults, the memory store) uses that one rule.
    """

    dir: str = "models"
    text_encoder: str = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class LoggingConfig:
    """Log level and format for the CLI and scripts (the library never configures logging itself)."""

    level: str = field(default="WARNING", metadata={"choices": ("DEBUG", "INFO", "WARNING", "ERROR")})
    json: bool = False


@dataclass(frozen=True)
class EngineConfig:
    """The engine's configuration sections."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    strict: bool = False
    source: str = "defaults"  # where the values came from, for `arrowengine info`


def read_config_file(path: str | os.PathLike[str] | None = None,
                     environ: typing.Mapping[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """The parsed YAML mapping and its path (``({}, "defaults")`` when no file is configured or present)."""
    explicit = path or (os.environ if environ is None else environ).get(CONFIG_ENV)
    candidate = Path(explicit) if explicit else Path(DEFAULT_CONFIG_FILE)
    if not candidate.is_file():
        if explicit:
            raise ConfigError(f"configuration file {candidate} does not exist; fix the path or unset {CONFIG_ENV}")
        return {}, "defaults"
    try:
        data = yaml.safe_load(candidate.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{candidate} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{candidate} must hold a mapping of sections, not {type(data).__name__}")
    return data, str(candidate)


def _coerce(value: Any, kind: Any) -> Any:
    """``value`` converted to the field type ``kind``; ``ValueError`` when it cannot be.

    The ``ValueError`` never reaches a user: :func:`load_section` turns it into a logged error or a ``ConfigError``.
    """
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return _coerce(value, options[0])
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("expected an integer")
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return float(value)
    if kind is str:
        if isinstance(value, dict | list):
            raise ValueError("expected a string")
        return str(value)
    return value


def _check_limits(value: Any, spec: dataclasses.Field) -> str | None:
    choices = spec.metadata.get("choices")
    if choices is not None and value not in choices:
        return f"allowed: {', '.join(map(str, choices))}"
    bounds = spec.metadata.get("range")
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        return f"allowed range: {bounds[0]}..{bounds[1]}"
    return None


def load_section(cls: type[T], section: str, values: dict[str, Any] | None = None, *, strict: bool = False,
                 environ: dict[str, str] | None = None) -> T:
    """Build the dataclass ``cls`` for ``section`` from ``values`` (YAML) and ``ARROWENGINE_<SECTION>_<KEY>``.

    Invalid values are logged (key, value, allowed) and replaced by the default; ``strict`` raises instead.
    """
    environ = os.environ if environ is None else environ
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in values:
        if key not in known:
            message = f"config: unknown key {section}.{key} (known: {', '.join(sorted(known))})"
            if strict:
                raise ConfigError(message)
            logger.warning(message)
    kwargs: dict[str, Any] = {}
    for name, spec in known.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            continue  # nested sections are built by their owner
        env_key = f"{_ENV_PREFIX}{section.upper()}_{name.upper()}"
        origin = f"environment variable {env_key}" if env_key in environ else f"{section}.{name}"
        raw = environ[env_key] if env_key in environ else values.get(name, dataclasses.MISSING)
        if raw is dataclasses.MISSING:
            continue
        try:
            value = _coerce(raw, kind)
            problem = _check_limits(value, spec)
        except (TypeError, ValueError) as exc:
            problem = str(exc)
        if problem is None:
            kwargs[name] = value
            continue
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()  # type: ignore[misc]
        message = f"config: invalid value {raw!r} for {section}.{name} ({origin}); {problem}"
        if strict:
            raise ConfigError(message)
        logger.error("%s; using the default %r", message, default)
    return cls(**kwargs)


def load_config(path: str | os.PathLike[str] | None = None, *, environ: dict[str, str] | None = None,
                strict: bool | None = None) -> EngineConfig:
    """The engine configuration from defaults, the YAML file and the environment (see the module docstring)."""
    environ = os.environ if environ is None else environ
    data, source = read_config_file(path, environ)
    if strict is None:
        raw_strict = environ.get(f"{_ENV_PREFIX}STRICT", data.get("strict", False))
        strict = _coerce(raw_strict, bool)
    sections: dict[str, Any] = {}
    for spec in dataclasses.fields(EngineConfig):
        kind = typing.get_type_hints(EngineConfig)[spec.name]
        if dataclasses.is_dataclass(kind):
            section_values = data.get(spec.name) or {}
            if not isinstance(section_values, dict):
                message = f"config: section {spec.name!r} must be a mapping, got {type(section_values).__name__}"
                if strict:
                    raise ConfigError(message)
                logger.error("%s; using defaults", message)
                section_values = {}
            sections[spec.name] = load_section(kind, spec.name, section_values, strict=bool(strict),
                                               environ=environ)
    unknown = set(data) - {f.name for f in dataclasses.fields(EngineConfig)}
    for key in sorted(unknown):
        logger.debug("config: section %r is not the engine's (another package may read it)", key)
    return EngineConfig(**sections, strict=bool(strict), source=source)


def resolve_models_dir(config: EngineConfig | None = None) -> Path:
    """The model store directory: ``models.dir`` (``ARROWENGINE_MODELS_DIR``, default ``models``) as an absolute
    path, ``~`` expanded and a relative path taken from the current directory.

    ``config`` defaults to :func:`load_config` (YAML file and environment), so this is the one rule for every
    component that needs the store.
    """
    config = load_config() if config is None else config
    return Path(os.path.abspath(Path(config.models.dir).expanduser()))


def resolve_verify_checksums(requested: bool | None = None) -> bool:
    """``requested``, or ``runtime.verify_checksums`` (``ARROWENGINE_RUNTIME_VERIFY_CHECKSUMS``) when it is ``None``:
    whether loaders hash every tensor against its stored checksum (off by default, to keep opening zero-copy)."""
    return load_config().runtime.verify_checksums if requested is None else bool(requested)
