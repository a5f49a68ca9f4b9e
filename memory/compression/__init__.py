"""The memory-compression SDK: lossless (LM arithmetic coder, zstd with a trained dictionary) and semantic
(summary + exact key entities + int8 embedding) compression of text memories, as Arrow records.

``memory.compression`` never imports the memory store; the store calls it.
"""

from memory.compression.arithmetic import ArithmeticDecoder, ArithmeticEncoder
from memory.compression.compressor import Compressor
from memory.compression.config import CompressionConfig
from memory.compression.entities import entity_retention, extract_entities
from memory.compression.errors import (
    CoderStateError,
    CompressionError,
    CorruptPayloadError,
    EmptyContentError,
    InvalidCoderSettingError,
    InvalidContentError,
    MissingCoderError,
    ModelMismatchError,
    RecordFormatError,
)
from memory.compression.lm_coder import LM_CODER_VERSION, LMArithmeticCoder, frequencies_from_logits
from memory.compression.lm_model import HFCausalLM, TokenStepper, load_causal_lm
from memory.compression.reconstructor import Reconstructor
from memory.compression.records import RECORD_SCHEMA, RECORD_VERSION, CompressedMemory
from memory.compression.text_model import TEXT_MODEL_VERSION, ContextTextModel
from memory.compression.zstd_dict import ZstdDictionary

__all__ = [
    "LM_CODER_VERSION",
    "RECORD_SCHEMA",
    "RECORD_VERSION",
    "TEXT_MODEL_VERSION",
    "ArithmeticDecoder",
    "ArithmeticEncoder",
    "CoderStateError",
    "CompressedMemory",
    "CompressionConfig",
    "CompressionError",
    "Compressor",
    "ContextTextModel",
    "CorruptPayloadError",
    "EmptyContentError",
    "HFCausalLM",
    "InvalidCoderSettingError",
    "InvalidContentError",
    "LMArithmeticCoder",
    "MissingCoderError",
    "ModelMismatchError",
    "Reconstructor",
    "RecordFormatError",
    "TokenStepper",
    "ZstdDictionary",
    "entity_retention",
    "extract_entities",
    "frequencies_from_logits",
    "load_causal_lm",
]
