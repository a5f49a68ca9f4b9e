"""``arrowengine memory consolidate|stats`` (a command plugin found by entry point), and the nightly script."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from arrowengine.cli import build_parser, main
from memory import MemoryStore

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["I drink two cups of coffee every morning before work.",
         "Coffee after lunch keeps me awake in long meetings.",
         "Without my morning coffee I get a headache by noon.",
         "The train was late again this morning."]


@pytest.fixture
def store_path(tmp_path, embedder, monkeypatch) -> Path:
    monkeypatch.setenv("ARROWENGINE_MEMORY_CONSOLIDATION_LLM_PROVIDER", "extractive")
    monkeypatch.setenv("ARROWENGINE_MEMORY_CONSOLIDATION_SIMILARITY_THRESHOLD", "0.4")
    with MemoryStore(tmp_path / "mem", embedder=embedder) as store:
        store.add_many(TEXTS)
    return tmp_path / "mem"


def test_the_memory_command_is_listed_without_importing_memory():
    code = ("import sys; from arrowengine.cli import build_parser; p = build_parser(); "
            "print('memory' in p._subparsers._group_actions[0].choices, 'memory' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["True", "False"]  # listed, and arrowengine did not import memory for it


def test_the_memory_plugin_registers_its_subcommands():
    args = build_parser(plugins=["memory"]).parse_args(["memory", "consolidate", "--store", "x", "--daemon"])
    assert (args.memory_command, args.store, args.daemon) == ("consolidate", "x", True)


def test_consolidate_then_stats(store_path, capsys):
    assert main(["memory", "consolidate", "--store", str(store_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["principles"], report["archived"], report["extractive"], report["llm"]) == (1, 3, 1, "extractive")
    assert main(["memory", "stats", "--store", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert "5 memories, tiers" in out and "'archived': 3" in out and "'long': 1" in out
    assert f"{report['run_id']} ok: scanned 4, clustered 3 in 1 clusters, 1 principles, 3 archived" in out
    assert main(["memory", "stats", "--store", str(store_path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["store"]["tiers"] == {"short": 1, "long": 1, "archived": 3} and len(stats["runs"]) == 1


def test_a_store_path_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["memory", "consolidate", "--store", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: memory store path") and "is an existing file, not a directory" in err


def test_the_nightly_script_runs_once(store_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["nightly_consolidation.py", "--store", str(store_path)])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "scripts" / "nightly_consolidation.py"), run_name="__main__")
    assert done.value.code == 0
    assert json.loads(capsys.readouterr().out)["archived"] == 3
