"""No silent overwrite: convert and quantize refuse an existing destination unless forced, never write into their
source, check before doing any work, and replace a model only with a complete one."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from arrowengine.cli import main
from arrowengine.converters import ConvertedModel, convert, write_model_dir
from arrowengine.errors import DestinationExistsError, DestinationIsSourceError, EngineError
from arrowengine.quantize import quantize_model

FORCE = "--force (force=True in Python)"


def _raises(cls, message: str):
    return pytest.raises(cls, match="^" + re.escape(message) + "$")


def _tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (or of ``root`` itself), by relative path."""
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _tiny_model(seed: int = 0) -> ConvertedModel:
    torch.manual_seed(seed)
    return ConvertedModel({"w": torch.randn(4, 4), "b": torch.randn(4)}, {"model_type": "bert"}, source="test")


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    return write_model_dir(_tiny_model(), tmp_path / "models" / "tiny")


@pytest.fixture()
def hf_source(tmp_path: Path, minilm_source: Path) -> Path:
    """A Hugging Face directory (MiniLM's files, linked), so convert has a real source to read."""
    src = tmp_path / "hf"
    src.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        os.symlink(minilm_source / name, src / name)
    return src


def test_convert_refuses_existing_model_dir(hf_source, model_dir, capsys):
    before, source_before = _tree_hashes(model_dir), _tree_hashes(hf_source)
    with _raises(DestinationExistsError, f"destination {model_dir} already exists; nothing was written. Pass {FORCE} "
                                         f"to replace it, or choose another destination"):
        convert(hf_source, model_dir)
    assert main(["convert", str(hf_source), str(model_dir), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"error: destination {model_dir} already exists; nothing was written. Pass "
                                       f"{FORCE} to replace it, or choose another destination\n")
    assert _tree_hashes(model_dir) == before
    assert _tree_hashes(hf_source) == source_before
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["tiny"]  # no staging left behind


def test_convert_into_a_file_fails_before_reading_the_source(tmp_path):
    dst = tmp_path / "taken.txt"
    dst.write_text("user data")
    # The source is not even a model: the destination error comes first, so no conversion work was done.
    with _raises(DestinationExistsError, f"destination {dst} exists and is a file, not a model directory; remove it "
                                         f"or choose another destination ({FORCE} only replaces model directories)"):
        convert(tmp_path / "no-such-source", dst, force=True)
    assert dst.read_text() == "user data"
    assert issubclass(DestinationExistsError, FileExistsError)
    with _raises(DestinationExistsError, f"destination {dst / 'model'} cannot be created: {dst} is a file, not a "
                                         f"directory; choose another destination"):
        convert(tmp_path / "no-such-source", dst / "model")


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "child", "parent"])
def test_destination_never_the_source_even_with_force(tmp_path, model_dir, spelling, capsys):
    src = model_dir
    link = tmp_path / "alias"
    os.symlink(src, link)
    dst = {"same": src, "dotdot": src / ".." / src.name, "symlink": link, "child": src / "int8",
           "parent": src.parent}[spelling]
    before = _tree_hashes(src)
    relation = {"child": "lies inside the source", "parent": "contains the source"}.get(spelling, "is the source")
    message = (f"destination {dst} ({Path(os.path.realpath(dst))}) {relation} {src} ({src}); writing it would "
               f"destroy the source, even with {FORCE}: choose another destination such as models/NAME-new")
    with _raises(DestinationIsSourceError, message):
        quantize_model(src, dst, force=True)
    with _raises(DestinationIsSourceError, message):
        convert(src, dst, force=True)
    assert main(["quantize", str(src), str(dst), "--bits", "8", "--force"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert _tree_hashes(src) == before


def test_quantize_refuses_existing_destination_before_any_work(tmp_path, model_dir, capsys):
    # The source has no config.json: any work on it would fail differently; the destination check comes first.
    dst = tmp_path / "other"
    shutil.copytree(model_dir, dst)
    before = _tree_hashes(dst)
    assert main(["quantize", str(model_dir), str(dst), "--bits", "8"]) == 2
    assert capsys.readouterr().err == (f"error: destination {dst} already exists; nothing was written. Pass {FORCE} "
                                       f"to replace it, or choose another destination\n")
    assert _tree_hashes(dst) == before


def test_force_replaces_only_model_directories(tmp_path, hf_source):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with _raises(DestinationExistsError, f"destination {precious} is a non-empty directory without weights.parquet "
                                         f"or model_card.json; {FORCE} only replaces model directories: remove it "
                                         f"yourself or choose another destination"):
        convert(hf_source, precious, force=True)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_force_swaps_in_a_complete_model_and_a_failed_run_keeps_the_old_one(tmp_path, model_dir):
    before = _tree_hashes(model_dir)
    broken = _tiny_model(seed=1)
    broken.files = {"tokenizer.json": tmp_path / "missing-side-file.json"}  # fails after weights.parquet is written
    with pytest.raises(FileNotFoundError):
        write_model_dir(broken, model_dir, force=True)
    assert _tree_hashes(model_dir) == before
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["tiny"]  # staging and old copy cleaned up
    write_model_dir(_tiny_model(seed=2), model_dir, force=True)
    after = _tree_hashes(model_dir)
    assert after["weights.parquet"] != before["weights.parquet"]
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["tiny"]


def test_fetch_refuses_a_foreign_directory(tmp_path):
    from arrowengine.converters.packages import fetch_model

    models = tmp_path / "models"
    (models / "all-MiniLM-L6-v2").mkdir(parents=True)
    (models / "all-MiniLM-L6-v2" / "mine.txt").write_text("not a model")
    with pytest.raises(DestinationExistsError) as info:
        fetch_model("all-MiniLM-L6-v2", models)
    assert isinstance(info.value, EngineError)
    assert (models / "all-MiniLM-L6-v2" / "mine.txt").read_text() == "not a model"
