"""memory: the agent's memory store (LanceDB), hybrid retrieval, tiering and compression policies."""

from memory.compression import (
    RECORD_SCHEMA,
    CompressedMemory,
    CompressionConfig,
    CompressionError,
    Compressor,
    CorruptPayloadError,
    HFCausalLM,
    InvalidContentError,
    MissingCoderError,
    ModelMismatchError,
    Reconstructor,
    RecordFormatError,
    ZstdDictionary,
    load_causal_lm,
)
from memory.config import MemoryConfig, RetrievalConfig, TieringConfig, load_memory_config
from memory.embedder import Embedder
from memory.errors import (
    CommitConflictError,
    EmbedderUnavailableError,
    EmbeddingDimensionError,
    EmptyContentError,
    InvalidEmbeddingError,
    InvalidMetadataError,
    MemoryNotFoundError,
    MemoryStoreError,
    StoreCorruptError,
    StorePathError,
    UnknownModalityError,
    UnknownPolicyError,
)
from memory.links import InvalidLinkError
from memory.policies import (
    CompressionPolicy,
    EvictionPolicy,
    register_compression_policy,
    register_eviction_policy,
)
from memory.schema import Hit, Link, Memory
from memory.store import MemoryStore
from memory.tiering import TierChange

__all__ = [
    "RECORD_SCHEMA",
    "CommitConflictError",
    "CompressedMemory",
    "CompressionConfig",
    "CompressionError",
    "CompressionPolicy",
    "Compressor",
    "CorruptPayloadError",
    "Embedder",
    "EmbedderUnavailableError",
    "EmbeddingDimensionError",
    "EmptyContentError",
    "EvictionPolicy",
    "HFCausalLM",
    "Hit",
    "InvalidContentError",
    "InvalidEmbeddingError",
    "InvalidLinkError",
    "InvalidMetadataError",
    "Link",
    "Memory",
    "MemoryConfig",
    "MemoryNotFoundError",
    "MemoryStore",
    "MemoryStoreError",
    "MissingCoderError",
    "ModelMismatchError",
    "Reconstructor",
    "RecordFormatError",
    "RetrievalConfig",
    "StoreCorruptError",
    "StorePathError",
    "TierChange",
    "TieringConfig",
    "UnknownModalityError",
    "UnknownPolicyError",
    "ZstdDictionary",
    "load_causal_lm",
    "load_memory_config",
    "register_compression_policy",
    "register_eviction_policy",
]
