"""The default precision of the encoders: the fastest one that holds cosine >= 0.99 to fp32 on this CPU.

``TextEncoder``, ``AudioEncoder`` and ``ImageEncoder`` take ``precision="auto"`` by default and resolve it here
from what the CPU offers (:class:`CpuCapabilities`): int8 dot-product instructions (AVX512-VNNI, AVX-VNNI,
AMX-INT8), native bfloat16 (AVX512-BF16, AMX-BF16) and oneDNN's kernels in this torch build. The rules, per
encoder, from the fidelity and speed measurements in ``docs/benchmarks/`` (``int8-mixed`` holds a minimum cosine
>= 0.995 on real chat messages and >= 0.9999 pooled on real speech; ``bfloat16`` >= 0.999):

* text (lean BERT forward): ``int8-mixed`` with int8 dot products and native bf16 (its FFN down-projection runs
  in bf16); ``bfloat16`` with native bf16 only; else ``int8-weights`` with AVX2 + FMA (Q8_0 weight blocks and
  the native block kernel: a quarter of the weight memory, about half the float32 time for a short query, a
  batch as fast as float32, minimum cosine >= 0.999 on real chat messages; float32, logged, where the kernel
  cannot be built); else ``float32``.
* audio (lean Whisper encoder): ``int8-mixed`` with int8 dot products, native bf16 and oneDNN's quantized linear;
  ``bfloat16`` with native bf16; else ``float32``.
* image (DINOv2 under autocast): ``bfloat16`` with native bf16; else ``float32``.

Without those instructions bf16 and int8 are emulated (slower than fp32), so the rule falls back to ``float32``
and logs why. Every choice is logged at INFO. Tests build :class:`CpuCapabilities` by hand to simulate other
CPUs and run this same selection code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from arrowengine.errors import ConfigError

__all__ = ["ENCODER_PRECISIONS", "CpuCapabilities", "PrecisionChoice", "select_precision"]

logger = logging.getLogger(__name__)

# the precisions each encoder kind can run (``auto`` resolves to one of them)
ENCODER_PRECISIONS = {
    "text": ("float32", "int8-weights", "bfloat16", "int8-mixed", "int8"),
    "audio": ("float32", "bfloat16", "int8-mixed"),
    "image": ("float32", "bfloat16"),
}
_ALIASES = {"fp32": "float32", "bf16": "bfloat16"}
_INT8_DOT_ISA = ("AVX512-VNNI", "AVX-VNNI", "AMX-INT8")
_BF16_ISA = ("AVX512-BF16", "AMX-BF16")


@dataclass(frozen=True)
class CpuCapabilities:
    """What the precision rules look at. Build one by hand to simulate another CPU.

    ``isa`` uses :func:`arrowengine.hardware.cpu_info`'s names (``AVX512-VNNI``, ``AMX-BF16``, ...);
    ``onednn_int8`` says whether oneDNN's quantized linear runs in this torch build.
    """

    isa: tuple[str, ...] = field(default_factory=tuple)
    onednn_int8: bool = False

    @classmethod
    def detect(cls) -> CpuCapabilities:
        """This machine's CPU and torch build."""
        from arrowengine.hardware import cpu_info
        from arrowengine.runtime.fixed_linear import onednn_int8_available

        return cls(isa=cpu_info().isa, onednn_int8=onednn_int8_available())

    @property
    def int8_dot(self) -> str | None:
        """The int8 dot-product extension present (``AVX512-VNNI`` ...), or None."""
        return next((isa for isa in _INT8_DOT_ISA if isa in self.isa), None)

    @property
    def bf16(self) -> str | None:
        """The native bfloat16 extension present (``AVX512-BF16`` or ``AMX-BF16``), or None."""
        return next((isa for isa in _BF16_ISA if isa in self.isa), None)

    @property
    def block_kernels(self) -> bool:
        """Whether the CPU runs the native Q8_0 block kernel (:data:`arrowengine.runtime.native.gguf.REQUIRED_ISA`)."""
        from arrowengine.runtime.native.gguf import missing_isa

        return not missing_isa(self.isa)


@dataclass(frozen=True)
class PrecisionChoice:
    """A resolved precision, what was asked for, and why (``fell_back``: a faster one lacked instructions)."""

    precision: str
    requested: str
    reason: str
    fell_back: bool = False


def _normalize(kind: str, requested: str) -> str:
    if kind not in ENCODER_PRECISIONS:
        raise ConfigError(f"encoder kind must be one of {', '.join(ENCODER_PRECISIONS)}, got {kind!r}")
    name = _ALIASES.get(requested, requested)
    allowed = ENCODER_PRECISIONS[kind]
    if name != "auto" and name not in allowed:
        raise ConfigError(f"precision must be 'auto' or one of {', '.join(allowed)} (aliases fp32, bf16), "
                          f"got {requested!r}")
    return name


def _auto(kind: str, caps: CpuCapabilities) -> PrecisionChoice:
    dot, bf16 = caps.int8_dot, caps.bf16
    int8_ready = dot and bf16 and (kind == "text" or caps.onednn_int8)
    if kind in ("text", "audio") and int8_ready:
        return PrecisionChoice("int8-mixed", "auto", f"{dot} int8 dot products and {bf16}")
    if bf16:
        missing = "" if kind == "image" else f"; int8-mixed needs {_int8_needs(kind, caps)}"
        return PrecisionChoice("bfloat16", "auto", f"{bf16}{missing}", fell_back=kind != "image")
    if kind == "text" and caps.block_kernels:
        return PrecisionChoice("int8-weights", "auto", "AVX2 + FMA Q8_0 block kernel; no native bfloat16 "
                               f"({' or '.join(_BF16_ISA)}) or int8 dot products ({' or '.join(_INT8_DOT_ISA)})",
                               fell_back=True)
    return PrecisionChoice("float32", "auto", f"this CPU has no native bfloat16 ({' or '.join(_BF16_ISA)}): "
                           "reduced precisions would be emulated, slower than float32", fell_back=True)


def _int8_needs(kind: str, caps: CpuCapabilities) -> str:
    needs = [] if caps.int8_dot else [" or ".join(_INT8_DOT_ISA)]
    if kind == "audio" and not caps.onednn_int8:
        needs.append("oneDNN's quantized linear in this torch build")
    return " and ".join(needs)


def select_precision(kind: str, requested: str = "auto", *, caps: CpuCapabilities | None = None,
                     component: str = "") -> PrecisionChoice:
    """Resolve ``requested`` for an encoder of ``kind`` (``text``, ``audio`` or ``image``) on this CPU.

    ``auto`` follows the rules in the module docstring; an explicit precision (or its alias ``fp32`` /
    ``bf16``) is kept as asked, even where it is emulated. ``component`` names the encoder in the log line.

    Raises:
        ConfigError: an unknown kind or a precision the encoder does not run.
    """
    name = _normalize(kind, requested)
    if name != "auto":
        return PrecisionChoice(name, requested, "requested")
    choice = _auto(kind, caps if caps is not None else CpuCapabilities.detect())
    logger.info("%s precision auto -> %s (%s)%s", component or f"{kind} encoder", choice.precision, choice.reason,
                "; pass precision='fp32' for exact float32" if choice.precision != "float32" else "")
    return choice
