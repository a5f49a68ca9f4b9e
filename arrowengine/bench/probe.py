"""Load a model in a fresh process and report open-to-first-output time and memory split by kind.

Run as ``python -m arrowengine.bench.probe '<json spec>'``; prints one JSON line. Libraries are imported before
the clock starts (every loader pays them equally and once per process); the clock covers opening the weights,
building the model and producing the first output. Memory is read right after that first output: anonymous and
file-backed RSS growth, the process peak, and the bytes of the weights file resident in this process.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from arrowengine.bench.measure import mapping_resident_bytes, memory_snapshot

__all__ = ["LOADERS", "run_probe"]

_SENTENCE = "The quick brown fox jumps over the lazy dog."


def _text_arrowengine(spec: dict[str, Any]) -> Any:
    import transformers.models.bert.modeling_bert  # noqa: F401 - library import, before the clock like the peers'

    from arrowengine.runtime.text_encoder import TextEncoder

    def load() -> Any:
        encoder = TextEncoder(spec["path"], **spec.get("kwargs", {}))
        return encoder, encoder.encode([_SENTENCE])
    return load


def _text_sentence_transformers(spec: dict[str, Any]) -> Any:
    from sentence_transformers import SentenceTransformer

    def load() -> Any:
        model = SentenceTransformer(spec["path"], device="cpu")
        return model, model.encode([_SENTENCE])
    return load


def _text_torch_load(spec: dict[str, Any]) -> Any:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel
    from transformers.models.bert import modeling_bert  # noqa: F401 - library import, before the clock

    def load() -> Any:
        model = BertModel(BertConfig.from_pretrained(spec["config_dir"]))
        model.load_state_dict(torch.load(spec["path"], weights_only=True), strict=False)
        tokens = AutoTokenizer.from_pretrained(spec["config_dir"])([_SENTENCE], return_tensors="pt")
        with torch.inference_mode():
            return model, model.eval()(**tokens).last_hidden_state
    return load


def _llm_arrowengine(spec: dict[str, Any]) -> Any:
    import transformers.models.llama.modeling_llama  # noqa: F401 - library import, before the clock
    from transformers import AutoTokenizer  # noqa: F401

    from arrowengine.runtime.llm import LLM, SamplingParams

    def load() -> Any:
        llm = LLM(spec["path"], **spec.get("kwargs", {}))
        return llm, llm.generate("Hello", SamplingParams(max_new_tokens=1))
    return load


def _llm_transformers(spec: dict[str, Any]) -> Any:
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401 - library import, before the clock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load() -> Any:
        model = AutoModelForCausalLM.from_pretrained(spec["path"], dtype=torch.float32)
        ids = AutoTokenizer.from_pretrained(spec["path"])("Hello", return_tensors="pt")
        with torch.inference_mode():
            return model, model.generate(**ids, max_new_tokens=1, do_sample=False)
    return load


LOADERS = {
    "text-arrowengine": _text_arrowengine,
    "text-sentence-transformers": _text_sentence_transformers,
    "text-torch-load": _text_torch_load,
    "llm-arrowengine": _llm_arrowengine,
    "llm-transformers": _llm_transformers,
}


def run_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``spec['loader']`` from open to first output in this process and measure memory after it."""
    import torch

    load = LOADERS[spec["loader"]](spec)  # imports happen here, before the clock
    before = memory_snapshot()
    start = time.perf_counter()
    model, _ = load()  # the model stays alive until memory is read: its mapping is part of the figure
    seconds = time.perf_counter() - start
    after = memory_snapshot()
    weights = Path(spec.get("weights_file") or "")
    vram = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    return {
        "seconds": seconds,
        "anon_bytes": after.anon_bytes - before.anon_bytes,
        "file_bytes": after.file_bytes - before.file_bytes,
        "peak_rss_bytes": after.peak_rss_bytes,
        "rss_before_bytes": before.rss_bytes,
        "model_resident_bytes": mapping_resident_bytes(weights) if weights.is_file() else 0,
        "model_file_bytes": weights.stat().st_size if weights.is_file() else 0,
        "vram_bytes": vram,
        "model": type(model).__name__,
    }


if __name__ == "__main__":
    print(json.dumps(run_probe(json.loads(sys.argv[1]))))
