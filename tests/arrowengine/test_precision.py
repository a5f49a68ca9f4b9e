"""The encoders' default precision on simulated CPUs (the selection code is the real one; no model needed)."""

from __future__ import annotations

import logging
import re

import pytest

from arrowengine.errors import ConfigError, EngineError
from arrowengine.runtime.precision import CpuCapabilities, PrecisionChoice, select_precision

AVX2 = CpuCapabilities(isa=("SSE4.2", "AVX", "AVX2", "FMA"), onednn_int8=True)
SKYLAKE_SP = CpuCapabilities(isa=("AVX2", "FMA", "AVX-512F", "AVX-512BW", "AVX-512VL"), onednn_int8=True)
AVX_NO_FMA = CpuCapabilities(isa=("SSE4.2", "AVX", "AVX2"), onednn_int8=False)
CASCADE_LAKE = CpuCapabilities(isa=(*SKYLAKE_SP.isa, "AVX512-VNNI"), onednn_int8=True)
ZEN4 = CpuCapabilities(isa=(*CASCADE_LAKE.isa, "AVX512-BF16"), onednn_int8=True)
ZEN4_NO_ONEDNN_INT8 = CpuCapabilities(isa=ZEN4.isa, onednn_int8=False)
SAPPHIRE_RAPIDS = CpuCapabilities(isa=(*ZEN4.isa, "AMX-TILE", "AMX-BF16", "AMX-INT8"), onednn_int8=True)
GRAVITON3 = CpuCapabilities(isa=("NEON", "SVE"), onednn_int8=False)
BF16_ONLY = CpuCapabilities(isa=("AVX2", "AVX512-BF16"), onednn_int8=True)

BLOCKS = ("AVX2 + FMA Q8_0 block kernel; no native bfloat16 (AVX512-BF16 or AMX-BF16) or int8 dot products "
          "(AVX512-VNNI or AVX-VNNI or AMX-INT8)")
NO_BF16 = ("this CPU has no native bfloat16 (AVX512-BF16 or AMX-BF16): reduced precisions would be emulated, "
           "slower than float32")


@pytest.mark.parametrize("caps, kind, expected", [
    (ZEN4, "text", PrecisionChoice("int8-mixed", "auto", "AVX512-VNNI int8 dot products and AVX512-BF16")),
    (ZEN4, "audio", PrecisionChoice("int8-mixed", "auto", "AVX512-VNNI int8 dot products and AVX512-BF16")),
    (ZEN4, "image", PrecisionChoice("bfloat16", "auto", "AVX512-BF16")),
    (SAPPHIRE_RAPIDS, "text", PrecisionChoice("int8-mixed", "auto", "AVX512-VNNI int8 dot products and AVX512-BF16")),
    (ZEN4_NO_ONEDNN_INT8, "text", PrecisionChoice("int8-mixed", "auto",
                                                  "AVX512-VNNI int8 dot products and AVX512-BF16")),
    (ZEN4_NO_ONEDNN_INT8, "audio", PrecisionChoice(
        "bfloat16", "auto", "AVX512-BF16; int8-mixed needs oneDNN's quantized linear in this torch build", True)),
    (BF16_ONLY, "text", PrecisionChoice(
        "bfloat16", "auto", "AVX512-BF16; int8-mixed needs AVX512-VNNI or AVX-VNNI or AMX-INT8", True)),
    (CASCADE_LAKE, "text", PrecisionChoice("int8-weights", "auto", BLOCKS, True)),
    (CASCADE_LAKE, "audio", PrecisionChoice("float32", "auto", NO_BF16, True)),
    (SKYLAKE_SP, "image", PrecisionChoice("float32", "auto", NO_BF16, True)),
    (AVX2, "text", PrecisionChoice("int8-weights", "auto", BLOCKS, True)),
    (AVX_NO_FMA, "text", PrecisionChoice("float32", "auto", NO_BF16, True)),
    (GRAVITON3, "text", PrecisionChoice("float32", "auto", NO_BF16, True)),
    (GRAVITON3, "audio", PrecisionChoice("float32", "auto", NO_BF16, True)),
])
def test_auto_picks_the_fastest_precision_the_cpu_runs_natively(caps, kind, expected):
    assert select_precision(kind, caps=caps) == expected


def test_amx_only_machine_uses_amx_names():
    amx = CpuCapabilities(isa=("AVX2", "AMX-BF16", "AMX-INT8"), onednn_int8=True)
    assert select_precision("text", caps=amx).reason == "AMX-INT8 int8 dot products and AMX-BF16"


def test_auto_choice_is_logged_with_the_way_back_to_fp32(caplog):
    with caplog.at_level(logging.INFO, logger="arrowengine.runtime.precision"):
        select_precision("text", caps=ZEN4, component="TextEncoder(all-MiniLM-L6-v2)")
        select_precision("audio", caps=AVX2)
    assert [r.getMessage() for r in caplog.records] == [
        "TextEncoder(all-MiniLM-L6-v2) precision auto -> int8-mixed (AVX512-VNNI int8 dot products and "
        "AVX512-BF16); pass precision='fp32' for exact float32",
        f"audio encoder precision auto -> float32 ({NO_BF16})",
    ]


@pytest.mark.parametrize("requested, kind, precision", [
    ("fp32", "text", "float32"), ("float32", "audio", "float32"), ("bf16", "image", "bfloat16"),
    ("int8-mixed", "text", "int8-mixed"), ("int8", "text", "int8"), ("int8-mixed", "audio", "int8-mixed"),
])
def test_explicit_precision_is_kept_even_where_emulated(requested, kind, precision):
    assert select_precision(kind, requested, caps=AVX2) == PrecisionChoice(precision, requested, "requested")


@pytest.mark.parametrize("kind, requested, message", [
    ("text", "int4", "precision must be 'auto' or one of float32, int8-weights, bfloat16, int8-mixed, int8 "
                     "(aliases fp32, bf16), got 'int4'"),
    ("audio", "int8", "precision must be 'auto' or one of float32, bfloat16, int8-mixed (aliases fp32, bf16), "
                      "got 'int8'"),
    ("image", "int8-mixed", "precision must be 'auto' or one of float32, bfloat16 (aliases fp32, bf16), got "
                            "'int8-mixed'"),
    ("video", "auto", "encoder kind must be one of text, audio, image, got 'video'"),
])
def test_unknown_precision_or_kind_is_a_config_error(kind, requested, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message) + "$") as info:
        select_precision(kind, requested, caps=ZEN4)
    assert isinstance(info.value, EngineError) and isinstance(info.value, ValueError)


def test_detect_reads_this_machine():
    from arrowengine.hardware import cpu_info
    from arrowengine.runtime.fixed_linear import onednn_int8_available

    caps = CpuCapabilities.detect()
    assert caps == CpuCapabilities(isa=cpu_info().isa, onednn_int8=onednn_int8_available())
    assert select_precision("text", caps=caps) == select_precision("text")
