"""Which numeric mode ``LLM`` runs in: a ``precision`` name, resolved against the CPU and the model file.

``precision`` is one argument for what ``dtype`` and ``weight_quant`` say separately:

* ``"fp32"``: float32 weights and activations (token-identical to ``transformers.generate``);
* ``"bf16"``: bfloat16 weights and activations;
* ``"int8"`` / ``"int4"``: weight-only integer matrices with bf16 activations (``weight_quant``);
* ``"gguf"``: the model file's own GGUF blocks (Q8_0 / Q4_0 / Q4_1) through the native block kernels, fp32
  activations: exactly the source weights, so perplexity is the dequantized reference's;
* ``"q8_0"``: a float model's matrices (and token embedding) quantized to Q8_0 blocks at load, then run as
  ``"gguf"``: a quarter of the float bytes read per token, perplexity within a fraction of a percent;
* ``"auto"`` (``LLM(dir)``'s default): the fastest of those that holds the reference fidelity (perplexity within
  +1%) on this CPU, see :func:`auto_precision`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from arrowengine.runtime.llm.errors import UnsupportedModelError

__all__ = ["PRECISIONS", "Precision", "auto_precision", "resolve_precision"]

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8", "int4", "gguf", "q8_0")

# ISA names as arrowengine.hardware.cpu_info() reports them. bf16 activations only pay with native bf16 dot
# products: without them torch's int8 / bf16 kernels convert every element and run slower than fp32.
_BF16_ISA = ("AVX512-BF16", "AMX-BF16")


@dataclass(frozen=True)
class Precision:
    """A resolved mode: ``dtype`` (activations) and ``weight_quant`` as ``LlamaForward`` takes them."""

    name: str
    dtype: str
    weight_quant: str | None
    reason: str = ""


_FIXED = {
    "fp32": Precision("fp32", "float32", None),
    "bf16": Precision("bf16", "bfloat16", None),
    "int8": Precision("int8", "bfloat16", "int8"),
    "int4": Precision("int4", "bfloat16", "int4"),
    "gguf": Precision("gguf", "float32", "gguf"),
    "q8_0": Precision("q8_0", "float32", "q8_0"),
}


def auto_precision(isa: Collection[str], *, has_blocks: bool, block_kernels: bool) -> Precision:
    """The fastest mode that keeps perplexity within +1% of the float reference, for a CPU with ``isa``.

    ``has_blocks``: the model file holds GGUF blocks; ``block_kernels``: the native block kernels built and
    run here. Measured on SmolLM2-135M (docs/benchmarks/llm.json): GGUF block kernels run the source weights
    themselves (no fidelity lost); int8 weights with bf16 activations hold perplexity within 1% and are the
    fastest float-file mode where the CPU has bf16 dot products; elsewhere a float file is quantized to Q8_0
    blocks at load for the same kernels (perplexity within 1%); fp32 where those kernels cannot run.
    """
    if has_blocks and block_kernels:
        return Precision("gguf", "float32", "gguf", "the model holds GGUF blocks and the native kernels run here")
    bf16 = [name for name in _BF16_ISA if name in isa]
    if bf16:
        return Precision("int8", "bfloat16", "int8", f"the CPU has {bf16[0]} (int8 weights, bf16 activations)")
    if block_kernels and not has_blocks:
        return Precision("q8_0", "float32", "q8_0", "no native bf16 on this CPU; the native block kernels run here "
                         "(the float matrices become Q8_0 blocks at load)")
    why = "no native bf16 on this CPU (needs AVX512-BF16 or AMX-BF16)"
    if has_blocks:
        why = "the native block kernels are unavailable here; the blocks are dequantized once"
    return Precision("fp32", "float32", None, why)


def resolve_precision(precision: str | None, dtype: str | None, weight_quant: str | None, *, default: str,
                      isa: Collection[str] = (), has_blocks: bool = False,
                      block_kernels: bool = False) -> Precision:
    """The mode from ``precision`` or the older ``dtype`` / ``weight_quant`` pair (never both).

    With none of the three set, ``default`` applies (``"auto"`` for ``LLM(dir)``, ``"fp32"`` for
    ``LLM.from_model``, which wraps a module as it is).
    """
    if precision is not None and (dtype is not None or weight_quant is not None):
        raise UnsupportedModelError(
            f"pass either precision={precision!r} or dtype / weight_quant, not both (precision='fp32' is "
            f"dtype='float32', weight_quant=None)")
    if precision is None and (dtype is not None or weight_quant is not None):
        return Precision("custom", dtype or ("bfloat16" if weight_quant else "float32"), weight_quant)
    name = precision or default
    if name not in PRECISIONS:
        raise UnsupportedModelError(f"precision={name!r} is not supported; use one of {list(PRECISIONS)}")
    if name == "gguf" and not has_blocks:
        raise UnsupportedModelError(
            "precision='gguf' needs a model converted from a GGUF file with its blocks kept "
            "(arrowengine convert model.gguf, without --dequantize)")
    if name != "auto":
        return _FIXED[name]
    chosen = auto_precision(isa, has_blocks=has_blocks, block_kernels=block_kernels)
    logger.info("LLM: precision auto -> %s (%s); precision='fp32' for the float reference", chosen.name,
                chosen.reason)
    return chosen
