"""The server's card store: a new version is written in full, then swapped in; a restart finds exactly the
versions that were committed, and a version file whose commit never finished is not current."""

from __future__ import annotations

import ast
from pathlib import Path

from federation.store import CardStore
from tests.federation.support import ADAPTER, nudged, tiny_card


def test_versions_survive_a_restart_and_an_unfinished_commit_is_not_current(tmp_path):
    store = CardStore(tmp_path / "srv")
    first = tiny_card()
    store.commit(first)
    second = nudged(first, 1).with_tensors(nudged(first, 1).tensors, 1)
    store.commit(second)
    assert sorted(p.name for p in (tmp_path / "srv" / ADAPTER).iterdir()) == ["CURRENT", "v00000000.parquet",
                                                                              "v00000001.parquet"]
    # a crash after the new version's file was written but before CURRENT was replaced
    nudged(second, 2).with_tensors(nudged(second, 2).tensors, 2).save(tmp_path / "srv" / ADAPTER / "v00000002.parquet")
    (tmp_path / "srv" / ADAPTER / ".CURRENT.tmp-1-2").write_text("2\n")
    again = CardStore(tmp_path / "srv")
    assert again.adapters() == [ADAPTER]
    assert (again.current(ADAPTER).meta.version, again.current(ADAPTER).checksum) == (1, second.checksum)
    assert again.get(ADAPTER, 0).checksum == first.checksum
    assert again.current(ADAPTER).meta.parent_version == 0


def test_federation_imports_only_arrowengine_and_quant():
    """DESIGN section 7: ``federation`` may use ``arrowengine`` and ``quant``, never ``memory``."""
    root = Path(__file__).resolve().parents[2]
    first_party = {"arrowengine", "quant", "memory", "multimodal", "federation", "tests", "scripts"}
    used: dict[str, set[str]] = {}
    for path in [*sorted((root / "federation").glob("*.py")), root / "scripts" / "flight_sync_daemon.py"]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                if name.split(".")[0] in first_party:
                    used.setdefault(name.split(".")[0], set()).add(path.name)
    assert set(used) <= {"arrowengine", "quant", "federation"}, used
