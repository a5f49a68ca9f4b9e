"""The arrowengine command: each verb on real files, and errors as one line with exit code 2."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from arrowengine.cli import main
from arrowengine.config import resolve_models_dir
from arrowengine.format import write_weights
from arrowengine.logging_setup import level_from_verbosity, silence_third_party_warnings


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


def _run(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arrowengine", *args], capture_output=True, text=True, input=stdin,
                          env=env, timeout=600, check=False)


def test_python_dash_m_is_the_console_script():
    from arrowengine import __version__

    done = _run("--version")
    assert (done.returncode, done.stdout) == (0, f"arrowengine {__version__}\n")


def test_bench_help_is_the_benchmarks_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["-v", "bench", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: arrowengine bench [-h]")
    assert "--quick" in out and "--suites" in out and "unrecognized arguments" not in out


def test_embed_never_waits_on_stdin_without_a_dash(capsys):
    with pytest.raises(SystemExit) as info:
        main(["embed"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "arrowengine embed: error: the following arguments are required: TEXT"
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    assert "a '-' argument reads one text per line from stdin (stdin is never read otherwise)" in " ".join(
        capsys.readouterr().out.split())


def test_embed_dash_reads_stdin(minilm_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n\ngoodbye\n"))
    assert main(["embed", "--model", str(minilm_dir), "first", "-"]) == 0
    assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == ["first", "hello", "goodbye"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n \n"))
    assert main(["embed", "--model", str(minilm_dir), "-"]) == 2
    assert capsys.readouterr().err == ("error: embed: no texts to embed (stdin held only blank lines); pass texts as "
                                       "arguments or pipe non-empty lines with '-'\n")


@pytest.mark.parametrize(("verbose", "default", "level"), [
    (0, "WARNING", "WARNING"), (0, "error", "ERROR"), (1, "WARNING", "INFO"), (2, "WARNING", "DEBUG"),
    (5, "ERROR", "DEBUG"),
])
def test_verbosity_levels(verbose, default, level):
    assert level_from_verbosity(verbose, default) == level


def test_models_dir_has_one_rule(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ARROWENGINE_MODELS_DIR", raising=False)
    monkeypatch.delenv("ARROWENGINE_CONFIG", raising=False)
    assert resolve_models_dir() == tmp_path / "models"
    monkeypatch.setenv("ARROWENGINE_MODELS_DIR", "store/../elsewhere")
    assert resolve_models_dir() == tmp_path / "elsewhere"
    monkeypatch.setenv("ARROWENGINE_MODELS_DIR", "~/store")
    assert resolve_models_dir() == Path.home() / "store"
    (tmp_path / "arrowengine.yaml").write_text("models:\n  dir: from-yaml\n")
    monkeypatch.delenv("ARROWENGINE_MODELS_DIR")
    assert resolve_models_dir() == tmp_path / "from-yaml"
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models_dir"] == str(tmp_path / "from-yaml")
    from memory.config import MemoryConfig
    from memory.embedder import default_embedder
    from memory.errors import EmbedderUnavailableError

    assert MemoryConfig().models_dir is None  # the memory store follows the same rule
    with pytest.raises(EmbedderUnavailableError, match=re.escape(repr(str(tmp_path / "from-yaml" / "no-model")))):
        default_embedder(MemoryConfig().models_dir, "no-model")


@pytest.fixture()
def tiny_bert(tmp_path, minilm_source) -> Path:
    """A 1-layer BERT with MiniLM's tokenizer (random weights: built here, nothing downloaded)."""
    from transformers import BertConfig, BertModel

    from arrowengine.converters import ConvertedModel, write_model_dir

    config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=512, architectures=["BertModel"])
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in BertModel(config).state_dict().items()}
    files = {name: minilm_source / name for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                                                     "special_tokens_map.json")}
    return write_model_dir(ConvertedModel(state, config.to_dict(), files, source="test"), tmp_path / "tiny-bert")


def test_quantize_is_quiet_by_default_and_force_replaces(tiny_bert, tmp_path, capsys):
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(f"calibration sentence number {i} about the weather" for i in range(16)))
    dst = tmp_path / "out" / "tiny-int8"  # its parent does not exist yet
    args = ["quantize", str(tiny_bert), str(dst), "--bits", "8", "--calib", str(calib)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if " INFO " in line] == []
    first = (dst / "weights.parquet").read_bytes()
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"error: destination {dst} already exists; nothing was written.")
    assert (dst / "weights.parquet").read_bytes() == first
    assert main(["-v", *args, "--force"]) == 0
    assert any(" INFO arrowengine.quantize: quantized " in line for line in capsys.readouterr().err.splitlines())
    assert (dst / "accuracy_report.json").is_file()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["tiny-int8"]  # no staging directory left behind


def test_third_party_future_warnings_are_silenced_ours_are_not():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        silence_third_party_warnings()
        warnings.warn_explicit("theirs", FutureWarning, "m.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("theirs too", DeprecationWarning, "t.py", 1, module="torch")
        warnings.warn_explicit("ours", FutureWarning, "q.py", 1, module="arrowengine.quantize")
        warnings.warn_explicit("actionable", UserWarning, "m.py", 1, module="transformers.modeling_utils")
    assert [str(w.message) for w in seen] == ["ours", "actionable"]


def test_log_lines_go_above_progress_bars(tmp_path, monkeypatch):
    import logging

    from tqdm.contrib.logging import _TqdmLoggingHandler

    seen: list[type] = []
    monkeypatch.setattr("arrowengine.cli._cmd_verify", lambda args: seen.extend(map(type, logging.getLogger().handlers))
                        or 0)
    assert main(["verify", str(tmp_path)]) == 0
    assert _TqdmLoggingHandler in seen


def test_interrupt_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("arrowengine.cli._cmd_verify", interrupted)
    assert main(["verify", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "interrupted\n"
