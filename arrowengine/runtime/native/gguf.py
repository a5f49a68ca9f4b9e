"""Native kernels over GGUF blocks, built on first use: ``y = x W^T``, exact dequantization (``gguf_blocks.c``) and
a whole Llama decoder layer for one new token per row (``llama_layer.c``).

The C file is compiled once per source/flags/compiler by the shared machinery of
:mod:`arrowengine.runtime.native` and called through ctypes, at one of two widths: 16 lanes where the CPU has
AVX-512 F/BW/VL and VNNI, 8 lanes (AVX2 + FMA; F16C comes with every such CPU) elsewhere. Both compute the same
arithmetic per lane, so they give bit-identical results. :func:`block_kernels` returns ``None`` (the reason logged
once) without AVX2 + FMA, without a compiler, when the build fails, or with ``runtime.native_kernels: false``, and
callers fall back to torch over dequantized weights.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import subprocess
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch

from arrowengine.config import load_config
from arrowengine.hardware import cpu_info
from arrowengine.runtime.native import _build, native_cache_dir
from quant.gguf import GGUFBlocks

__all__ = ["AVX512_ISA", "REQUIRED_ISA", "BertArgs", "BlockKernels", "LayerArgs", "block_kernels", "blocks_dequantize",
           "blocks_matmul", "kernel_width", "missing_isa", "read_bandwidth", "threads"]

logger = logging.getLogger(__name__)

# blocks_lib.c includes the others: one library with the block products, the decoder layer and the encoder layers
_SOURCE = Path(__file__).with_name("blocks_lib.c")
_INCLUDED = tuple(Path(__file__).with_name(name)
                  for name in ("gguf_blocks.c", "lanes.h", "llama_layer.c", "bert_layer.c", "exp2_poly.h"))
# -ffp-contract=off: the dequantization must round like gguf-py's numpy (no fused multiply-add)
_FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")
REQUIRED_ISA = ("AVX2", "FMA")
# the 16-lane build: vpdpwssd (VNNI) takes 32 int16 products per instruction, the multiplier's full width
AVX512_ISA = ("AVX-512F", "AVX-512BW", "AVX-512VL", "AVX512-VNNI")
_WIDTH_FLAGS = {"avx2": (), "avx512": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni")}


def missing_isa(isa: Collection[str]) -> list[str]:
    """The extensions the block kernels need that ``isa`` lacks (empty when they can run)."""
    return [name for name in REQUIRED_ISA if name not in isa]


def kernel_width(isa: Collection[str]) -> str:
    """The build the block kernels use on a CPU with ``isa``: ``"avx512"`` (16 lanes) or ``"avx2"`` (8)."""
    return "avx512" if all(name in isa for name in AVX512_ISA) else "avx2"


@dataclass(frozen=True)
class BlockKernels:
    """The loaded library: ``matmul``, ``dequantize``, ``read_bytes`` (``gguf_blocks.c``), ``layer``
    (``llama_layer.c``'s ``ae_llama_layers``: consecutive decoder layers in one call), ``rms_norm``
    (``ae_rms_norm_rows``: the decoder's final norm) and ``bert``
    (``bert_layer.c``'s ``ae_bert_layers``: a whole BERT encoder in one call), as ctypes functions; ``width`` is
    the build (:func:`kernel_width`)."""

    matmul: ctypes._CFuncPtr
    dequantize: ctypes._CFuncPtr
    read_bytes: ctypes._CFuncPtr
    layer: ctypes._CFuncPtr
    rms_norm: ctypes._CFuncPtr
    bert: ctypes._CFuncPtr
    path: Path
    width: str


class LayerArgs(ctypes.Structure):
    """``ae_layer_args`` of ``llama_layer.c`` (same field order and types)."""

    _fields_ = [(name, ctypes.c_int64) for name in ("batch", "hidden", "heads", "kv_heads", "head_dim", "inter",
                                                      "slot", "max_len")] + [
        ("eps", ctypes.c_float), ("threads", ctypes.c_int)] + [
        (name, ctypes.c_void_p) for name in ("h", "attn_norm", "mlp_norm", "cos", "sin", "kv", "mask")] + [
        (name, ctypes.c_int) for name in ("qkv_type", "o_type", "gate_up_type", "down_type")] + [
        (name, ctypes.c_void_p) for name in ("qkv", "o", "gate_up", "down")] + [
        (name, ctypes.c_int64) for name in ("qkv_stride", "o_stride", "gate_up_stride", "down_stride")] + [
        (name, ctypes.c_void_p) for name in ("slots", "kv_rows")] + [("kv_half", ctypes.c_int)]


class BertArgs(ctypes.Structure):
    """``ae_bert_args`` of ``bert_layer.c`` (same field order and types)."""

    _fields_ = [(name, ctypes.c_int64) for name in ("batch", "seq", "hidden", "heads", "inter")] + [
        ("eps", ctypes.c_float), ("threads", ctypes.c_int), ("gelu_tanh", ctypes.c_int),
        ("h", ctypes.c_void_p), ("mask", ctypes.c_void_p), ("qkv_parts", ctypes.c_int),
        ("qkv_type", ctypes.c_int * 3), ("qkv", ctypes.c_void_p * 3), ("qkv_rows", ctypes.c_int64 * 3),
        ("qkv_stride", ctypes.c_int64 * 3), ("qkv_bias", ctypes.c_void_p)] + [
        (name, ctypes.c_int) for name in ("o_type", "up_type", "down_type")] + [
        (name, ctypes.c_void_p) for name in ("o", "up", "down")] + [
        (name, ctypes.c_int64) for name in ("o_stride", "up_stride", "down_stride")] + [
        (name, ctypes.c_void_p) for name in ("o_bias", "up_bias", "down_bias", "ln1_w", "ln1_b", "ln2_w", "ln2_b")]


@functools.cache
def _load(width: str) -> BlockKernels | None:
    runtime = load_config().runtime
    if not runtime.native_kernels:
        logger.info("native kernels disabled (runtime.native_kernels is false): GGUF blocks are dequantized")
        return None
    try:
        flags = (*_FLAGS, *_WIDTH_FLAGS[width], f"-I{_SOURCE.parent}")
        path = _build(_SOURCE, flags, native_cache_dir(runtime.cache_dir), _INCLUDED)
        library = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("native GGUF block kernels unavailable, the blocks are dequantized instead: %s", exc)
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    matmul = library.ae_gguf_matmul
    matmul.argtypes = [ctypes.c_int, ptr, i64, i64, i64, ptr, i64, i64, ptr, i64, ctypes.c_int]
    matmul.restype = ctypes.c_int
    dequantize = library.ae_gguf_dequantize
    dequantize.argtypes = [ctypes.c_int, ptr, i64, i64, i64, ptr]
    dequantize.restype = ctypes.c_int
    read_bytes = library.ae_read_bytes
    read_bytes.argtypes = [ptr, i64, ctypes.c_int]
    read_bytes.restype = i64
    layer = library.ae_llama_layers  # (args of n consecutive layers, n)
    layer.argtypes = [ctypes.POINTER(LayerArgs), ctypes.c_int64]
    layer.restype = ctypes.c_int
    rms_norm = library.ae_rms_norm_rows  # (x, weight, rows, n, eps, out)
    rms_norm.argtypes = [ptr, ptr, i64, i64, ctypes.c_float, ptr]
    rms_norm.restype = ctypes.c_int
    bert = library.ae_bert_layers  # (args of n consecutive layers, n)
    bert.argtypes = [ctypes.POINTER(BertArgs), ctypes.c_int64]
    bert.restype = ctypes.c_int
    return BlockKernels(matmul, dequantize, read_bytes, layer, rms_norm, bert, path, width)


def block_kernels(isa: Collection[str] | None = None) -> BlockKernels | None:
    """The native block kernels at this CPU's width, or None where they cannot run (``isa`` simulates another CPU
    in tests: an AVX2-only ``isa`` loads the 8-lane build, which runs on any AVX2 CPU)."""
    isa = cpu_info().isa if isa is None else isa
    missing = missing_isa(isa)
    if missing:
        _log_missing(tuple(missing))
        return None
    return _load(kernel_width(isa))


@functools.cache
def _log_missing(missing: tuple[str, ...]) -> None:
    logger.info("native GGUF block kernels need %s, which this CPU lacks: the blocks are dequantized",
                ", ".join(missing))


def read_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5, threads: int | None = None) -> float | None:
    """Best memory read bandwidth in bytes/s over ``repeats`` passes of a ``nbytes`` buffer (None: no kernels).

    The buffer is larger than any last-level cache here, so this is DRAM bandwidth: the ceiling of a decode step
    that reads every weight once.
    """
    import time

    kernels = block_kernels()
    if kernels is None:
        return None
    buffer = torch.ones(nbytes // 4096 * 4096, dtype=torch.uint8)
    count = threads or torch.get_num_threads()
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        kernels.read_bytes(buffer.data_ptr(), buffer.numel(), count)
        best = max(best, buffer.numel() / (time.perf_counter() - started))
    return best


def threads() -> int:
    """Threads the kernels use: torch's intra-op setting (``LLM(threads=...)`` sets it)."""
    return torch.get_num_threads()


def blocks_matmul(kernels: BlockKernels, blocks: GGUFBlocks, x2d: torch.Tensor,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """``x2d [M, k] @ W^T`` over GGUF blocks ``W [n, k]`` through the native kernel: float32 ``[M, n]`` (into
    ``out`` when given; rows of ``out`` may be strided)."""
    if x2d.dtype != torch.float32 or x2d.stride(-1) != 1:
        x2d = x2d.float().contiguous()
    rows = x2d.shape[0]
    n, k = blocks.shape
    if out is None:
        out = torch.empty(rows, n)
    data = blocks.data
    status = kernels.matmul(blocks.kind.ggml_type, data.data_ptr(), n, k, data.stride(0), x2d.data_ptr(), rows,
                            x2d.stride(0), out.data_ptr(), out.stride(0), threads())
    if status != 0:
        raise MemoryError(f"the GGUF block kernel failed with status {status} (scratch allocation)")
    return out


def blocks_dequantize(kernels: BlockKernels, blocks: GGUFBlocks, out: torch.Tensor | None = None) -> torch.Tensor:
    """float32 ``[n, k]`` of GGUF blocks through the native kernel (bit-identical to
    :meth:`quant.gguf.GGUFBlocks.dequantize`, some 20x faster)."""
    n, k = blocks.shape
    if out is None:
        out = torch.empty(n, k)
    data = blocks.data
    status = kernels.dequantize(blocks.kind.ggml_type, data.data_ptr(), n, k, data.stride(0), out.data_ptr())
    if status != 0:
        raise MemoryError(f"the GGUF block dequantization failed with status {status}")
    return out
