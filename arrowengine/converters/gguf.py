"""Read a llama.cpp GGUF file (Llama family) into a :class:`ConvertedModel` in Hugging Face Llama naming.

Q8_0, Q4_0 and Q4_1 tensors keep their blocks byte for byte (``quant.gguf.GGUFBlocks``, schema V3 rows) unless
``dequantize=True``; every other tensor (F32 norms, F16, K-quants) is dequantized to float32 with llama.cpp's own
``gguf`` package. Tensors are renamed from llama.cpp's scheme (``blk.N.attn_q``) to ``transformers``'
(``model.layers.N.self_attn.q_proj``), and the rotary permutation llama.cpp applies to the Q and K projections
is undone exactly as ``transformers``' GGUF loader undoes it. The ``LlamaConfig`` comes from the file's
metadata; the tokenizer is rebuilt by ``transformers``' GGUF tokenizer conversion so it encodes identically to
``from_pretrained(gguf_file=...)``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arrowengine.converters.source import ConvertedModel
from arrowengine.errors import ConversionError

__all__ = ["GGUF_MAGIC", "detect", "gguf_to_hf_name", "read", "unpermute_rotary"]

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"

# llama.cpp architectures whose tensors follow the Llama layout (and Llama's Q/K rotary permutation).
_LLAMA_ARCHS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}

# llama.cpp block tensor -> transformers module, per "Standardized tensor names" in ggml/docs/gguf.md.
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_TOP_RE = re.compile(r"^([a-z_]+)\.(weight|bias)$")


def detect(src: Path) -> bool:
    """True when ``src`` is a file starting with the GGUF magic bytes."""
    src = Path(src)
    if not src.is_file():
        return False
    with src.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


def gguf_to_hf_name(name: str) -> str | None:
    """The transformers Llama name of a llama.cpp tensor name, or None when it has no counterpart.

    ``rope_freqs`` (precomputed rotary frequencies) is such a tensor: transformers recomputes it.
    """
    m = _BLOCK_RE.match(name)
    if m:
        module = _BLOCK_NAMES.get(m.group(2))
        return None if module is None else f"model.layers.{m.group(1)}.{module}.{m.group(3)}"
    m = _TOP_RE.match(name)
    if m and m.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"
    return None


def unpermute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (``convert_hf_to_gguf.py`` ``LlamaModel.permute``).

    llama.cpp interleaves each head's two rotary halves; transformers keeps them as contiguous halves.
    ``n_head`` is the number of query heads for Q and of key/value heads for K.
    """
    dim = weight.shape[0] // n_head // 2
    w = weight.reshape(n_head, dim, 2, *weight.shape[1:])
    return w.swapaxes(2, 1).reshape(weight.shape)


def read(src: Path, **options: Any) -> ConvertedModel:
    """Read a Llama-family GGUF file into float32 tensors, a LlamaConfig dict and tokenizer files.

    Options: ``tokenizer`` (default True) rebuilds the tokenizer; False skips it (faster, for tests of the
    weights alone). ``dequantize`` (default False) turns Q8_0 / Q4_0 / Q4_1 blocks into float32 too; by
    default they are kept exactly as the file has them (``LLM`` runs them through the native block kernels).
    """
    import gguf

    src = Path(src)
    if not detect(src):
        raise ConversionError(f"{src} is not a GGUF file (it does not start with b'GGUF'); pass a .gguf file")
    try:
        reader = gguf.GGUFReader(src)
    except (ValueError, IndexError, OSError) as exc:
        raise ConversionError(f"{src} is not a readable GGUF file ({exc}); download or export it again") from exc
    meta = _metadata(reader)
    arch = str(meta.get("general.architecture", ""))
    if arch not in _LLAMA_ARCHS:
        raise ConversionError(
            f"{src}: GGUF architecture {arch!r} is not supported; supported: {', '.join(sorted(_LLAMA_ARCHS))}"
        )
    _check_complete(src, reader)
    config = _config(meta, arch, reader)
    keep_blocks = not options.get("dequantize", False)
    state = _tensors(src, reader, config, keep_blocks=keep_blocks)
    files: dict[str, Path | bytes] = {
        "generation_config.json": _json_bytes(_generation_config(config)),
    }
    if options.get("tokenizer", True):
        files.update(_tokenizer_files(src))
    return ConvertedModel(
        state_dict=state,
        config=config,
        files=files,
        source=f"{src} (GGUF v{meta.get('GGUF.version')}, {meta.get('general.name', 'unnamed')})",
        source_format="gguf",
        license=str(meta.get("general.license", "unknown")),
        card_extra={
            "gguf_file_type": meta.get("general.file_type"),
            "gguf_tensor_types": sorted({t.tensor_type.name for t in reader.tensors}),
            "dequantized_to": "float32",
            "blocks_kept": sorted({v.quant_type for v in state.values() if not isinstance(v, torch.Tensor)}),
        },
    )


def _metadata(reader: Any) -> dict[str, Any]:
    # Token lists are large and only the tokenizer conversion needs them: keep their length instead.
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                   "tokenizer.ggml.scores"):
            out[key + ".count"] = len(field.data)
            continue
        out[key] = field.contents()
    return out


def _check_complete(src: Path, reader: Any) -> None:
    size = os.path.getsize(src)
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.size * t.data.itemsize < int(t.n_bytes):
            raise ConversionError(
                f"{src} is truncated: tensor {t.name!r} ends at byte {end} but the file has {size} bytes; "
                "copy the file again"
            )


def _config(meta: dict[str, Any], arch: str, reader: Any) -> dict[str, Any]:
    from transformers import AutoConfig

    def key(name: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{name}", default)

    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    vocab = key("vocab_size") or meta.get("tokenizer.ggml.tokens.count")
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    kwargs: dict[str, Any] = {
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": int(key("rope.dimension_count", hidden // heads)),
        "max_position_embeddings": int(key("context_length", 2048)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "tie_word_embeddings": not has_output,
        "architectures": [_LLAMA_ARCHS[arch]],
    }
    for name in ("bos", "eos"):
        token_id = meta.get(f"tokenizer.ggml.{name}_token_id")
        if token_id is not None:
            kwargs[f"{name}_token_id"] = int(token_id)
    if meta.get("tokenizer.ggml.padding_token_id") is not None:
        kwargs["pad_token_id"] = int(meta["tokenizer.ggml.padding_token_id"])
    config = AutoConfig.for_model(arch, **kwargs).to_dict()
    config["dtype"] = "float32"
    return config


def _tensors(src: Path, reader: Any, config: dict[str, Any], *, keep_blocks: bool) -> dict[str, Any]:
    from gguf.quants import dequantize

    state: dict[str, Any] = {}
    skipped: list[str] = []
    for t in reader.tensors:
        hf_name = gguf_to_hf_name(t.name)
        if hf_name is None:
            skipped.append(t.name)
            continue
        if keep_blocks and (blocks := _blocks(t, config)) is not None:
            state[hf_name] = blocks
            continue
        try:
            weights = dequantize(t.data, t.tensor_type)
        except NotImplementedError as exc:
            raise ConversionError(
                f"{src}: tensor {t.name!r} has quantization type {t.tensor_type.name} which the installed "
                f"gguf package cannot dequantize ({exc}); upgrade gguf"
            ) from exc
        # float tensors come back as read-only views of the file mapping: copy them into our own memory
        weights = np.array(weights, dtype=np.float32, copy=True)
        if ".attn_q." in t.name:
            weights = unpermute_rotary(weights, config["num_attention_heads"])
        elif ".attn_k." in t.name:
            weights = unpermute_rotary(weights, config["num_key_value_heads"])
        state[hf_name] = torch.from_numpy(np.ascontiguousarray(weights))
    if skipped:
        logger.info("GGUF tensors without a transformers counterpart, not converted: %s", skipped)
    return state


def _blocks(t: Any, config: dict[str, Any]) -> Any:
    """The tensor's GGUF blocks (a copy out of the file mapping, Q/K rows unpermuted), or None for other types."""
    from quant.gguf import GGUFBlocks, gguf_type

    kind = gguf_type(t.tensor_type.name)
    if kind is None or t.data.ndim != 2:
        return None
    data = np.array(t.data, dtype=np.uint8, copy=True)  # [rows, row bytes]: whole rows of blocks
    # llama.cpp's rotary permutation moves whole rows, so undoing it on the block rows is lossless
    if ".attn_q." in t.name:
        data = unpermute_rotary(data, config["num_attention_heads"])
    elif ".attn_k." in t.name:
        data = unpermute_rotary(data, config["num_key_value_heads"])
    rows, k = int(t.shape[1]), int(t.shape[0])  # GGUF lists dimensions innermost first
    return GGUFBlocks(kind.quant_type, (rows, k), torch.from_numpy(np.ascontiguousarray(data)))


def _generation_config(config: dict[str, Any]) -> dict[str, Any]:
    out = {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id") if key in config}
    out["transformers_version"] = config.get("transformers_version")
    return out


def _tokenizer_files(src: Path) -> dict[str, Path | bytes]:
    """tokenizer.json, tokenizer_config.json and the chat template, via transformers' GGUF conversion."""
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tokenizer is read from the local file only
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name, local_files_only=True)
    files: dict[str, Path | bytes] = {}
    with tempfile.TemporaryDirectory(prefix="arrowengine-gguf-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        for path in sorted(Path(tmp).iterdir()):
            if path.name == "special_tokens_map.json" or not path.is_file():
                continue
            files[path.name] = path.read_bytes()
    # save_pretrained records how this process loaded it; a model dir must not carry that
    tok_config = json.loads(files["tokenizer_config.json"])
    for key in ("is_local", "local_files_only"):
        tok_config.pop(key, None)
    files["tokenizer_config.json"] = _json_bytes(tok_config)
    return files


def _json_bytes(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
