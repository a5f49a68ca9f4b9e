"""Bad input to the memory store (issues 17 and 18): each mistake is a named ``MemoryStoreError`` whose
message says what went wrong and what to do, and a failed write leaves the table exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest

import memory
import memory.compression
from arrowengine.errors import EngineError
from memory import (
    EmbedderOutputError,
    EmbeddingDimensionError,
    EmptyContentError,
    InvalidSearchError,
    MemoryStore,
    MemoryStoreError,
    StorePathIsFileError,
)


def _raises(cls: type[Exception], message: str):
    return pytest.raises(cls, match="^" + __import__("re").escape(message) + "$")


@pytest.mark.parametrize(
    ("k", "message"),
    [
        ("5", "search k='5' is a str; give a positive int, e.g. k=10"),
        (2.5, "search k=2.5 is a float; give a positive int, e.g. k=10"),
        (True, "search k=True is a bool; give a positive int, e.g. k=10"),
        (None, "search k=None is a NoneType; give a positive int, e.g. k=10"),
        (0, "search k=0 must be at least 1; give a positive int, e.g. k=10"),
        (-1, "search k=-1 must be at least 1; give a positive int, e.g. k=10"),
    ],
)
def test_search_k_must_be_a_positive_int(store, k, message):
    store.add("the only memory")
    with _raises(InvalidSearchError, message):
        store.search("memory", k=k)
    assert issubclass(InvalidSearchError, MemoryStoreError)


def test_search_k_accepts_numpy_ints(store):
    mid = store.add("the only memory")
    assert [h.id for h in store.search("memory", k=np.int64(3))] == [mid]


class _Broken:
    """A real embedder whose output is bent: one extra row, or a truncated dimension."""

    def __init__(self, inner, *, extra_row: bool = False, dim: int | None = None) -> None:
        self.inner, self.extra_row, self.dim = inner, extra_row, dim

    def encode(self, texts):
        out = self.inner.encode(texts)
        if self.extra_row:
            out = np.concatenate([out, out[:1]])
        if self.dim is not None:
            out = out[:, : self.dim]
        return out


def _snapshot(s: MemoryStore):
    return s._table.version, sorted(s._table.to_arrow().select(["id", "content"]).to_pylist(), key=str)


def test_embedder_with_wrong_row_count_stores_nothing(tmp_path, embedder):
    with MemoryStore(tmp_path / "m", embedder=embedder) as good:
        good.add_many(["first memory", "second memory"])
        before = _snapshot(good)
    with MemoryStore(tmp_path / "m", embedder=_Broken(embedder, extra_row=True)) as bad:
        with _raises(EmbedderOutputError, "text embedder _Broken returned 3 rows for 2 texts; encode(texts) must "
                                          "return one row per text, shape [len(texts), dim]"):
            bad.add_many(["third memory", "fourth memory"])
        with _raises(EmbedderOutputError, "text embedder _Broken returned 2 rows for 1 texts; encode(texts) must "
                                          "return one row per text, shape [len(texts), dim]"):
            bad.search("memory")
        assert _snapshot(bad) == before


def test_embedder_with_wrong_dimension_stores_nothing(tmp_path, embedder):
    with MemoryStore(tmp_path / "m", embedder=embedder) as good:
        good.add_many(["first memory", "second memory"])
        before = _snapshot(good)
    with MemoryStore(tmp_path / "m", embedder=_Broken(embedder, dim=100)) as bad:
        with _raises(EmbeddingDimensionError, "text embedder: embedding dimension 100 does not match the store's "
                                              "table dimension 384; use the same embedder the store was created "
                                              "with, or a new store path"):
            bad.add_many(["third memory"])
        assert _snapshot(bad) == before


def test_store_path_that_is_a_file(tmp_path, embedder):
    path = tmp_path / "notes.txt"
    path.write_text("my notes")
    with _raises(StorePathIsFileError, f"memory store path '{path}' is an existing file, not a directory; give a "
                                       "directory (a new path, or the directory of an existing store)"):
        MemoryStore(path, embedder=embedder)
    assert path.read_text() == "my notes"  # untouched
    assert isinstance(StorePathIsFileError("x"), NotADirectoryError)


def test_one_empty_content_error():
    assert memory.EmptyContentError is memory.compression.EmptyContentError
    assert issubclass(EmptyContentError, MemoryStoreError) and issubclass(EmptyContentError, ValueError)
    assert issubclass(memory.compression.CompressionError, MemoryStoreError)
    assert issubclass(MemoryStoreError, EngineError)
    with _raises(EmptyContentError, "no memories to compress: got an empty list"):
        memory.Compressor().compress([])
