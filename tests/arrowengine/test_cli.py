"""The arrowengine command: each verb on real files, and errors as one line with exit code 2."""

from __future__ import annotations

import json

import torch

from arrowengine.cli import main
from arrowengine.format import write_weights


def test_info_json_lists_isa_and_models(tmp_path, minilm_dir, capsys):
    assert main(["info", "--json", "--models-dir", str(minilm_dir.parent)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cpu"]["cores"] >= 1
    assert isinstance(info["cpu"]["isa"], list)
    assert info["torch"]["torch"] == torch.__version__
    [model] = [m for m in info["models"] if m["name"] == "all-MiniLM-L6-v2"]
    assert (model["schema_version"], model["model_type"], model["zero_copy"]) == (1, "bert", True)


def test_verify_ok_and_damaged(tmp_path, capsys):
    path = tmp_path / "w.parquet"
    write_weights(path, {"a": torch.ones(8)})
    assert main(["verify", str(path)]) == 0
    assert capsys.readouterr().out.strip().endswith("1 tensors, 32 bytes checked (xxh64): OK")
    data = bytearray(path.read_bytes())
    data[data.index(bytes(torch.ones(8).numpy().tobytes()))] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(["verify", str(path)]) == 1
    assert "FAILED (1 mismatches: a[0])" in capsys.readouterr().out


def test_convert_and_embed(tmp_path, minilm_source, capsys):
    dst = tmp_path / "minilm"
    assert main(["convert", str(minilm_source), str(dst), "--quiet"]) == 0
    assert (dst / "weights.parquet").is_file()
    capsys.readouterr()
    assert main(["embed", "--model", str(dst), "hello", "goodbye"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == ["hello", "goodbye"]
    assert len(lines[0]["embedding"]) == 384


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "missing.parquet")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: weight file {tmp_path / 'missing.parquet'} does not exist; convert a model first "
                   f"(arrowengine convert SRC models/NAME) or check the path\n")
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "is not a model source this build can convert" in capsys.readouterr().err
