"""Read a CTranslate2 Whisper export (faster-whisper's ``model.bin``) into transformers' Whisper naming.

CTranslate2's ``model.bin`` (binary version 6, written by ``ModelSpec._serialize``) is little-endian:

    u32 binary_version, str spec_name, u32 spec_revision, u32 n_variables,
    n_variables x (str name, u8 rank, rank x u32 dim, u8 dtype_id, u32 nbytes, nbytes of data),
    u32 n_aliases, n_aliases x (str alias, str target)

where ``str`` is ``u16 length`` (including a trailing NUL) then the bytes. The fused projections are split
back into ``q_proj``/``k_proj``/``v_proj`` (Whisper's ``k_proj`` has no bias: CTranslate2 stores zeros there).
A model split into several files (``model.bin.part1``, ``model.bin.part2`` ...) is read as their concatenation.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arrowengine.converters.source import ConvertedModel
from arrowengine.errors import ConversionError

__all__ = ["SUPPORTED_BINARY_VERSION", "ct2_to_hf_names", "detect", "model_bin_parts", "parse_model_bin", "read"]

logger = logging.getLogger(__name__)

SUPPORTED_BINARY_VERSION = 6
# CTranslate2's DataType enum (include/ctranslate2/types.h), in declaration order.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.dtype("V2")}
_BFLOAT16 = 5
_PART_RE = re.compile(r"^model\.bin\.part(\d+)$")


def detect(src: Path) -> bool:
    """True for a directory holding a CTranslate2 Whisper export (config.json with Whisper keys + model.bin)."""
    src = Path(src)
    if not src.is_dir() or not (src / "config.json").is_file():
        return False
    if not ((src / "model.bin").is_file() or any(_PART_RE.match(p.name) for p in src.iterdir())):
        return False
    try:
        config = json.loads((src / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "suppress_ids" in config and "alignment_heads" in config


def model_bin_parts(src: Path, extra_dirs: Sequence[Path] = ()) -> list[Path]:
    """The file(s) holding ``model.bin``: ``src/model.bin``, or its numbered parts in ``src`` and ``extra_dirs``."""
    src = Path(src)
    if (src / "model.bin").is_file():
        return [src / "model.bin"]
    parts: dict[int, Path] = {}
    for folder in (src, *map(Path, extra_dirs)):
        for path in folder.iterdir() if folder.is_dir() else ():
            m = _PART_RE.match(path.name)
            if m:
                parts.setdefault(int(m.group(1)), path)
    if not parts:
        raise ConversionError(f"{src} has no model.bin (nor model.bin.partN files); pass a CTranslate2 model dir")
    # a split has at least two parts; the count is stored nowhere, so a lone part1 means part2 is elsewhere
    missing = [i for i in range(1, max(max(parts), 2) + 1) if i not in parts]
    if missing:
        raise ConversionError(
            f"{src}: model.bin.part{missing[0]} is missing; pass the folder holding it with part_dirs=[...]"
        )
    return [parts[i] for i in sorted(parts)]


def parse_model_bin(data: bytes | memoryview, name: str = "model.bin") -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 ``model.bin`` into ``(spec_name, {variable: array})``; aliases become shared arrays.

    Raises :class:`ConversionError` naming the variable when the data ends early.
    """
    buf = memoryview(data)
    pos = 0
    current = "the header"

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(buf):
            raise ConversionError(
                f"{name} is truncated: {current} needs bytes {pos}..{pos + n} but the file has {len(buf)}; "
                "copy the model again"
            )
        out = buf[pos : pos + n]
        pos += n
        return out

    def u(fmt: str) -> int:
        return struct.unpack("<" + fmt, take(struct.calcsize(fmt)))[0]

    def string() -> str:
        raw = bytes(take(u("H")))
        return raw.rstrip(b"\0").decode("utf-8")

    version = u("I")
    if version != SUPPORTED_BINARY_VERSION:
        raise ConversionError(
            f"{name} has CTranslate2 binary version {version}; only version {SUPPORTED_BINARY_VERSION} is "
            "supported (re-export it with ctranslate2 >= 3)"
        )
    spec, _revision = string(), u("I")
    variables: dict[str, np.ndarray] = {}
    for index in range(u("I")):
        current = f"variable #{index}"
        var = string()
        current = f"variable {var!r}"
        shape = tuple(u("I") for _ in range(u("B")))
        dtype_id, nbytes = u("B"), u("I")
        if dtype_id not in _DTYPES:
            raise ConversionError(f"{name}: variable {var!r} has unknown CTranslate2 dtype id {dtype_id}")
        raw = take(nbytes)
        if dtype_id == _BFLOAT16:  # numpy has no bfloat16: widen the 16 bits into float32's upper half
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dtype_id]).newbyteorder("<"))
        variables[var] = arr.reshape(shape)
    current = "the alias table"
    for _ in range(u("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return spec, variables


def ct2_to_hf_names(variables: dict[str, np.ndarray]) -> dict[str, str]:
    """Golden map of CTranslate2 Whisper variable -> transformers name for the unfused tensors."""
    out: dict[str, str] = {}
    for side in ("encoder", "decoder"):
        hf = f"model.{side}"
        for var in variables:
            if not var.startswith(side + "/"):
                continue
            rest = var[len(side) + 1 :]
            m = re.match(r"layer_(\d+)/(.+)$", rest)
            if m:
                name = _LAYER_MAP.get(m.group(2))
                if name is not None:
                    out[var] = f"{hf}.layers.{m.group(1)}.{name}"
            elif rest in _TOP_MAP:
                out[var] = f"{hf}.{_TOP_MAP[rest]}"
    return out


_LAYER_MAP = {
    "self_attention/layer_norm/gamma": "self_attn_layer_norm.weight",
    "self_attention/layer_norm/beta": "self_attn_layer_norm.bias",
    "self_attention/linear_1/weight": "self_attn.out_proj.weight",
    "self_attention/linear_1/bias": "self_attn.out_proj.bias",
    "attention/layer_norm/gamma": "encoder_attn_layer_norm.weight",
    "attention/layer_norm/beta": "encoder_attn_layer_norm.bias",
    "attention/linear_0/weight": "encoder_attn.q_proj.weight",
    "attention/linear_0/bias": "encoder_attn.q_proj.bias",
    "attention/linear_2/weight": "encoder_attn.out_proj.weight",
    "attention/linear_2/bias": "encoder_attn.out_proj.bias",
    "ffn/layer_norm/gamma": "final_layer_norm.weight",
    "ffn/layer_norm/beta": "final_layer_norm.bias",
    "ffn/linear_0/weight": "fc1.weight",
    "ffn/linear_0/bias": "fc1.bias",
    "ffn/linear_1/weight": "fc2.weight",
    "ffn/linear_1/bias": "fc2.bias",
}
_TOP_MAP = {
    "conv1/weight": "conv1.weight",
    "conv1/bias": "conv1.bias",
    "conv2/weight": "conv2.weight",
    "conv2/bias": "conv2.bias",
    "position_encodings/encodings": "embed_positions.weight",
    "embeddings/weight": "embed_tokens.weight",
    "layer_norm/gamma": "layer_norm.weight",
    "layer_norm/beta": "layer_norm.bias",
}


def read(src: Path, **options: Any) -> ConvertedModel:
    """Read a CTranslate2 Whisper dir into a WhisperForConditionalGeneration state dict and its files.

    Options: ``part_dirs`` (folders holding further ``model.bin.partN`` files), ``dtype`` (torch dtype of the
    converted tensors, default float32: the fp16 source widens losslessly), ``source`` (a description).
    """
    src = Path(src)
    if not detect(src):
        raise ConversionError(
            f"{src} is not a CTranslate2 Whisper dir (needs config.json with alignment_heads/suppress_ids "
            "and model.bin)"
        )
    parts = model_bin_parts(src, options.get("part_dirs", ()))
    data = b"".join(p.read_bytes() for p in parts)
    spec, variables = parse_model_bin(data, name=str(parts[0]) if len(parts) == 1 else f"{src}/model.bin.part*")
    if spec != "WhisperSpec":
        raise ConversionError(f"{src}: model.bin holds a {spec}, not a WhisperSpec; only Whisper is supported")
    ct2_config = json.loads((src / "config.json").read_text())
    dtype = options.get("dtype", torch.float32)
    state = _state_dict(variables, dtype)
    tokenizer = json.loads((src / "tokenizer.json").read_text())
    special = {t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])}
    config = _config(variables, state, special, ct2_config)
    files: dict[str, Path | bytes] = {
        "tokenizer.json": src / "tokenizer.json",
        "tokenizer_config.json": _json_bytes(_tokenizer_config(config)),
        "preprocessor_config.json": _json_bytes(_preprocessor_config(config["num_mel_bins"])),
        "generation_config.json": _json_bytes(_generation_config(config, special, ct2_config)),
    }
    return ConvertedModel(
        state_dict=state,
        config=config,
        files=files,
        source=options.get("source", f"{src} (CTranslate2 {spec}, {len(parts)} file(s))"),
        source_format="ctranslate2",
        license=options.get("license", "MIT"),
        card_extra={"ct2_dtypes": sorted({str(v.dtype) for v in variables.values() if v.ndim > 1})},
    )


def _tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32)).to(dtype)


def _weight(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    array = variables[name]
    scale = variables.get(name + "_scale")
    if array.dtype in (np.int8, np.int16) and scale is not None:  # CTranslate2 quantized: q = w * scale
        return array.astype(np.float32) / np.asarray(scale, dtype=np.float32).reshape(-1, *[1] * (array.ndim - 1))
    return array


def _state_dict(variables: dict[str, np.ndarray], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    state = {hf: _tensor(_weight(variables, ct2), dtype) for ct2, hf in ct2_to_hf_names(variables).items()}
    for var in variables:
        m = re.match(r"(encoder|decoder)/layer_(\d+)/(self_attention|attention)/(linear_0|linear_1)/weight$", var)
        if not m:
            continue
        side, layer, block, linear = m.groups()
        if block == "self_attention" and linear == "linear_1":
            continue  # the output projection, already mapped
        prefix = f"model.{side}.layers.{layer}.{'self_attn' if block == 'self_attention' else 'encoder_attn'}"
        weight = _weight(variables, var)
        bias = variables[var[: -len("weight")] + "bias"]
        names = ("q", "k", "v") if block == "self_attention" else ("k", "v")  # cross-attn linear_1 fuses K, V
        d = weight.shape[0] // len(names)
        for i, proj in enumerate(names):
            state[f"{prefix}.{proj}_proj.weight"] = _tensor(weight[i * d : (i + 1) * d], dtype)
            if proj != "k":  # Whisper's key projection has no bias (CTranslate2 stores zeros)
                state[f"{prefix}.{proj}_proj.bias"] = _tensor(bias[i * d : (i + 1) * d], dtype)
    projection = variables.get("decoder/projection/weight")
    if projection is not None and projection is not variables["decoder/embeddings/weight"]:
        state["proj_out.weight"] = _tensor(_weight(variables, "decoder/projection/weight"), dtype)
    return state


def _config(variables: dict[str, np.ndarray], state: dict[str, torch.Tensor], special: dict[str, int],
            ct2_config: dict[str, Any]) -> dict[str, Any]:
    from transformers import WhisperConfig

    def count(side: str) -> int:
        return len({m.group(1) for k in variables if (m := re.match(rf"{side}/layer_(\d+)/", k))})

    vocab, d_model = state["model.decoder.embed_tokens.weight"].shape
    eos = special["<|endoftext|>"]
    config = WhisperConfig(
        vocab_size=int(vocab),
        d_model=int(d_model),
        num_mel_bins=int(state["model.encoder.conv1.weight"].shape[1]),
        encoder_layers=count("encoder"),
        decoder_layers=count("decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=int(state["model.encoder.layers.0.fc1.weight"].shape[0]),
        decoder_ffn_dim=int(state["model.decoder.layers.0.fc1.weight"].shape[0]),
        max_source_positions=int(state["model.encoder.embed_positions.weight"].shape[0]),
        max_target_positions=int(state["model.decoder.embed_positions.weight"].shape[0]),
        decoder_start_token_id=special["<|startoftranscript|>"],
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, eos])),
        tie_word_embeddings="proj_out.weight" not in state,
        architectures=["WhisperForConditionalGeneration"],
    ).to_dict()
    config["dtype"] = "float32"
    return config


def _tokenizer_config(config: dict[str, Any]) -> dict[str, Any]:
    token = "<|endoftext|>"
    return {
        "tokenizer_class": "WhisperTokenizer",
        "bos_token": token,
        "eos_token": token,
        "unk_token": token,
        "pad_token": token,
        "model_max_length": config["max_target_positions"],
        "errors": "replace",
        "add_prefix_space": False,
    }


def _preprocessor_config(n_mels: int) -> dict[str, Any]:
    from transformers import WhisperFeatureExtractor

    out = WhisperFeatureExtractor(feature_size=n_mels).to_dict()
    out["processor_class"] = "WhisperProcessor"
    return out


def _generation_config(config: dict[str, Any], special: dict[str, int], ct2_config: dict[str, Any]) -> dict[str, Any]:
    lang_to_id = {tok: i for tok, i in special.items() if i in set(ct2_config.get("lang_ids", []))}
    multilingual = config["vocab_size"] >= 51865  # the .en models drop one language token (51864)
    out: dict[str, Any] = {
        "decoder_start_token_id": config["decoder_start_token_id"],
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
        "max_length": config["max_target_positions"],
        "suppress_tokens": config["suppress_tokens"],
        "begin_suppress_tokens": config["begin_suppress_tokens"],
        "no_timestamps_token_id": special["<|notimestamps|>"],
        "is_multilingual": multilingual,
        "alignment_heads": ct2_config.get("alignment_heads", []),
        "task_to_id": {"transcribe": special["<|transcribe|>"], "translate": special["<|translate|>"]},
    }
    if multilingual:
        out["lang_to_id"] = lang_to_id
    return out


def _json_bytes(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
