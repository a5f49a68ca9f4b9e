"""quant: pure tensor math for quantized weights (no file I/O).

RTN quantize/dequantize (INT8 per channel, INT4/INT2 per group), bit packing (the schema V2 bit order),
GPTQ, mixed precision, ``QuantLinear`` with its execution modes, ``QuantEmbedding`` (int8 rows dequantized
at lookup), and accuracy metrics.
"""

from quant.embedding import QuantEmbedding, quantize_embedding
from quant.errors import (
    CalibrationError,
    GroupSizeError,
    NonFiniteWeightError,
    PackingError,
    QuantError,
    QuantModeError,
    QuantShapeError,
    UnsupportedBitsError,
)
from quant.gptq import GPTQ, GPTQConfig, gptq_quantize_blocks, gptq_quantize_model
from quant.kernels import select_backend
from quant.linear import MODES, QuantLinear, replace_linears
from quant.metrics import CosineStats, cosine_stats, perplexity, relative_error, windowed_perplexity
from quant.mixed import MixedRecipe, embedding_cosine_evaluator, layer_sensitivity, mixed_precision
from quant.packing import SUPPORTED_BITS, pack, packed_size, unpack
from quant.rtn import SUPPORTED_GROUP_SIZES, QuantizedTensor, compute_qparams, dequantize, quantize

__all__ = [
    "GPTQ",
    "MODES",
    "SUPPORTED_BITS",
    "SUPPORTED_GROUP_SIZES",
    "CalibrationError",
    "CosineStats",
    "GPTQConfig",
    "GroupSizeError",
    "MixedRecipe",
    "NonFiniteWeightError",
    "PackingError",
    "QuantEmbedding",
    "QuantError",
    "QuantLinear",
    "QuantModeError",
    "QuantShapeError",
    "QuantizedTensor",
    "UnsupportedBitsError",
    "compute_qparams",
    "cosine_stats",
    "dequantize",
    "embedding_cosine_evaluator",
    "gptq_quantize_blocks",
    "gptq_quantize_model",
    "layer_sensitivity",
    "mixed_precision",
    "pack",
    "packed_size",
    "perplexity",
    "quantize",
    "quantize_embedding",
    "relative_error",
    "replace_linears",
    "select_backend",
    "unpack",
    "windowed_perplexity",
]
