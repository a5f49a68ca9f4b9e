"""LLM precision selection: ``auto`` by simulated CPU capability sets, explicit modes, conflicting arguments."""

from __future__ import annotations

import logging

import pytest

from arrowengine.runtime.llm import UnsupportedModelError
from arrowengine.runtime.llm.precision import auto_precision, resolve_precision

AVX2 = ("SSE4.2", "AVX", "AVX2", "FMA")
AVX512 = (*AVX2, "AVX-512F", "AVX-512BW", "AVX-512VL", "AVX512-VNNI")


@pytest.mark.parametrize(("isa", "blocks", "kernels", "expect"), [
    (AVX2, False, False, ("fp32", "float32", None)),
    (AVX512, False, False, ("fp32", "float32", None)),
    ((*AVX512, "AVX512-BF16"), False, False, ("int8", "bfloat16", "int8")),
    ((*AVX2, "AMX-TILE", "AMX-BF16"), False, False, ("int8", "bfloat16", "int8")),
    (AVX2, True, True, ("gguf", "float32", "gguf")),
    ((*AVX512, "AVX512-BF16"), True, True, ("gguf", "float32", "gguf")),
    (AVX2, True, False, ("fp32", "float32", None)),
    (AVX2, False, True, ("q8_0", "float32", "q8_0")),
    (AVX512, False, True, ("q8_0", "float32", "q8_0")),
    ((*AVX512, "AVX512-BF16"), False, True, ("int8", "bfloat16", "int8")),
    ((*AVX512, "AVX512-BF16"), True, False, ("int8", "bfloat16", "int8")),
])
def test_auto_picks_by_cpu_and_model(isa, blocks, kernels, expect) -> None:
    chosen = auto_precision(isa, has_blocks=blocks, block_kernels=kernels)
    assert (chosen.name, chosen.dtype, chosen.weight_quant) == expect


def test_auto_is_logged_and_fp32_is_one_argument_away(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="arrowengine.runtime.llm.precision"):
        chosen = resolve_precision(None, None, None, default="auto", isa=(*AVX512, "AVX512-BF16"))
    assert chosen.name == "int8"
    assert "LLM: precision auto -> int8 (the CPU has AVX512-BF16 (int8 weights, bf16 activations))" in caplog.text
    fp32 = resolve_precision("fp32", None, None, default="auto", isa=(*AVX512, "AVX512-BF16"))
    assert (fp32.dtype, fp32.weight_quant) == ("float32", None)
    legacy = resolve_precision(None, "float32", None, default="auto", isa=(*AVX512, "AVX512-BF16"))
    assert (legacy.dtype, legacy.weight_quant) == ("float32", None)
    assert resolve_precision(None, None, "int8", default="fp32").dtype == "bfloat16"
    assert resolve_precision(None, None, None, default="fp32").name == "fp32"


def test_bad_precision_arguments_are_refused() -> None:
    with pytest.raises(UnsupportedModelError) as info:
        resolve_precision("int8", "float32", None, default="auto")
    assert str(info.value) == ("pass either precision='int8' or dtype / weight_quant, not both (precision='fp32' is "
                               "dtype='float32', weight_quant=None)")
    with pytest.raises(UnsupportedModelError) as info:
        resolve_precision("fp64", None, None, default="auto")
    assert str(info.value) == "precision='fp64' is not supported; use one of ['auto', 'fp32', 'bf16', 'int8', " \
                              "'int4', 'gguf', 'q8_0']"
    with pytest.raises(UnsupportedModelError) as info:
        resolve_precision("gguf", None, None, default="auto", has_blocks=False)
    assert str(info.value) == ("precision='gguf' needs a model converted from a GGUF file with its blocks kept "
                               "(arrowengine convert model.gguf, without --dequantize)")
    assert isinstance(info.value, ValueError)
