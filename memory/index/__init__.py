"""In-process search indexes of the memory store (vector, BM25 text, link graph), mirrored from LanceDB."""

from memory.index.graph import LinkGraph
from memory.index.rows import RowStore
from memory.index.sync import MemoryIndex
from memory.index.text import TextIndex, tokenize
from memory.index.vector import VectorIndex, train_centroids

__all__ = ["LinkGraph", "MemoryIndex", "RowStore", "TextIndex", "VectorIndex", "tokenize", "train_centroids"]
