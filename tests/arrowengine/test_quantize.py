"""arrowengine quantize / validate on the real MiniLM: INT8 is kept, a recipe under threshold is refused."""

from __future__ import annotations

import json

import pytest
import torch

from arrowengine.cli import main
from arrowengine.format import WeightFile
from quant import CalibrationError


@pytest.mark.slow
def test_int8_is_quantized_validated_and_recorded(minilm_dir, tmp_path, capsys):
    dst = tmp_path / "minilm-int8"
    assert main(["--log-level", "WARNING", "quantize", str(minilm_dir), str(dst), "--bits", "8"]) == 0
    weights = WeightFile.open(dst)
    assert weights.schema_version == 3 and weights.zero_copy  # V3: the Linears are Q8_0 blocks
    assert sum(weights.is_quantized(n) for n in weights.keys()) == 38  # every Linear incl. the pooler + embeddings
    assert weights.info("encoder.layer.0.attention.self.query.weight").quant.quant_type == "gguf_q8_0"
    assert weights.info("embeddings.word_embeddings.weight").quant.quant_type == "int8"
    assert weights.quant_recipe["int8_embeddings"] == ["embeddings.word_embeddings"]
    # codes + scales + zero points against the float32 file: the vocabulary table no longer stays float32
    assert (dst / "weights.parquet").stat().st_size <= 0.27 * (minilm_dir / "weights.parquet").stat().st_size
    report = json.loads((dst / "accuracy_report.json").read_text())
    assert report["passed"] and report["kind"] == "encoder" and report["value"] >= 0.995
    card = json.loads((dst / "model_card.json").read_text())
    assert card["schema_version"] == 3 and card["quant_recipe"]["bits"] == 8
    assert card["quant_recipe"]["weight_format"] == "q8_0"
    assert card["accuracy"]["value"] == report["value"]
    assert (dst / "accuracy_report.md").read_text().startswith(f"# Accuracy report: {dst}")
    capsys.readouterr()
    assert main(["--log-level", "WARNING", "validate", str(dst), "--reference", str(minilm_dir)]) == 0
    assert "verdict: PASSED" in capsys.readouterr().out


@pytest.mark.slow
def test_recipe_under_threshold_is_refused_and_writes_nothing(minilm_dir, tmp_path, capsys):
    dst = tmp_path / "minilm-int2"
    code = main(["--log-level", "WARNING", "quantize", str(minilm_dir), str(dst), "--bits", "2", "--group-size", "32"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: refused {dst}: mean_cosine ")
    assert err.rstrip().endswith("misses the threshold >= 0.99 (int2 rtn, group 32); nothing was written. Try more "
                                 "bits, GPTQ, or --mixed TARGET.")
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging directory left behind either


def test_bad_options_and_calibration(tmp_path):
    from arrowengine.quantize import QuantizeOptions, _calibration_and_eval

    with pytest.raises(ValueError, match=r"^bits must be 2, 4 or 8, got 3$"):
        QuantizeOptions(bits=3)
    with pytest.raises(ValueError, match=r"^group_size must be 0 \(per channel\), 32, 64 or 128, got 48$"):
        QuantizeOptions(group_size=48)
    with pytest.raises(ValueError, match=r"^weight_format must be 'auto', 'q8_0' or 'rows', got 'q4'$"):
        QuantizeOptions(weight_format="q4")
    with pytest.raises(ValueError, match=r"^weight_format 'q8_0' stores 8-bit RTN weights in blocks of 32: use "):
        QuantizeOptions(bits=4, weight_format="q8_0")
    # auto: Q8_0 blocks for an encoder at 8-bit RTN, per-channel rows otherwise (causal LMs, GPTQ, groups, mixed)
    assert QuantizeOptions().q8_0_blocks(causal=False) and not QuantizeOptions().q8_0_blocks(causal=True)
    assert not any(QuantizeOptions(**kwargs).q8_0_blocks(causal=False) for kwargs in (
        {"method": "gptq"}, {"group_size": 64}, {"mixed_target": 0.98}, {"bits": 4}, {"weight_format": "rows"}))
    small = tmp_path / "calib.txt"
    small.write_text("one line\ntwo lines\n")
    with pytest.raises(CalibrationError, match=rf"^calibration file {small} holds 2 samples; at least 16 are needed$"):
        _calibration_and_eval(QuantizeOptions(calib=str(small)))
    with pytest.raises(CalibrationError, match=r"does not exist; pass a text file with one sample per line$"):
        _calibration_and_eval(QuantizeOptions(calib=str(tmp_path / "missing.txt")))


def test_clip_option_and_causal_calibration(tmp_path):
    from pathlib import Path

    from arrowengine.quantize import QuantizeOptions, _calibration_and_eval, _lm_calibration, _tokenizer

    with pytest.raises(ValueError, match=r"^clip must be 'auto', 'minmax' or 'mse', got 'max'$"):
        QuantizeOptions(clip="max")
    assert QuantizeOptions(bits=2).group_clip == "mse" and QuantizeOptions(bits=4).group_clip == "minmax"
    assert QuantizeOptions(bits=2, clip="minmax").group_clip == "minmax"
    options = QuantizeOptions(bits=4, method="gptq", calib_samples=4, calib_seq_len=64)
    encoder_calib, held_out = _calibration_and_eval(options)
    calib, held_out_lm = _calibration_and_eval(options, causal=True)
    assert len(encoder_calib) == 4 and len(calib) == 4 * 64 // 16 and held_out_lm == held_out
    assert not set(calib) & set(held_out)
    src = Path(__file__).resolve().parents[2] / "models" / "smollm2-135m-instruct"
    if not (src / "tokenizer.json").exists():
        pytest.skip("models/smollm2-135m-instruct is not converted (scripts/fetch_models.py)")
    tokenizer = _tokenizer(src)
    seqs = _lm_calibration(tokenizer, calib, options)
    stream = tokenizer("\n".join(calib), return_tensors="pt").input_ids[0]
    assert len(seqs) == min(4, stream.numel() // 64) >= 1
    assert all(tuple(s.shape) == (1, 64) for s in seqs)
    assert torch.equal(torch.cat([s[0] for s in seqs]), stream[: 64 * len(seqs)])  # consecutive cuts of one stream
    assert tokenizer.decode(seqs[0][0]).startswith(calib[0][:10])
    with pytest.raises(CalibrationError, match=r"less than one sequence of 64; pass more text with --calib$"):
        _lm_calibration(tokenizer, ["hi there"], options)


@pytest.mark.slow
def test_mixed_precision_for_a_causal_lm_keeps_sensitive_linears_fp16(tmp_path):
    """INT4 RTN g128 alone costs SmolLM2 +22% held-out perplexity; --mixed 0.05 keeps the most sensitive Linears
    FP16 until the calibration-text perplexity is within +5%, and the result passes a +10% held-out check."""
    import json
    from pathlib import Path

    from arrowengine import WeightFile
    from arrowengine.quantize import QuantizeOptions, quantize_model

    src = Path(__file__).resolve().parents[2] / "models" / "smollm2-135m-instruct"
    if not (src / "weights.parquet").exists():
        pytest.skip("models/smollm2-135m-instruct is not converted (scripts/fetch_models.py)")
    # 2 calibration sequences of 256 tokens: one 512-token forward per perplexity of the bisection (4 took two
    # each, ~65 of the test's ~100 s on a CI worker)
    options = QuantizeOptions(bits=4, group_size=128, mixed_target=0.05, max_ppl_increase=0.10,
                              calib_samples=2, eval_samples=40)
    report = quantize_model(src, tmp_path / "smollm2-int4-mixed", options)
    recipe = WeightFile.open(tmp_path / "smollm2-int4-mixed").quant_recipe
    assert recipe["mixed_target"] == 0.05 and 0 < len(recipe["fp16_layers"]) < 210
    card = json.loads((tmp_path / "smollm2-int4-mixed" / "model_card.json").read_text())
    assert card["accuracy"]["passed"] and report.passed and report.value <= 0.10, report


def test_int8_embedding_rows_load_zero_copy_and_embed_like_float(minilm_dir, text_encoder, tmp_path):
    """A V2 file whose word embeddings are int8 rows: load_model builds a QuantEmbedding over the mapped blobs
    (the existing quantized row type, quantized along the row), and the embeddings stay close to float32."""
    import numpy as np

    from arrowengine.converters import ConvertedModel, write_model_dir
    from arrowengine.runtime.loading import load_config_dict, load_model
    from arrowengine.runtime.text_encoder import TextEncoder
    from quant import QuantEmbedding, quantize_embedding

    name = "embeddings.word_embeddings.weight"
    float_weights = WeightFile.open(minilm_dir)
    state = {n: float_weights[n] for n in float_weights.keys()}
    state[name] = quantize_embedding(state[name], name=name)
    model = ConvertedModel(state_dict=state, config=load_config_dict(minilm_dir),
                           files={f: minilm_dir / f for f in ("tokenizer.json", "modules.json",
                                                              "sentence_bert_config.json", "1_Pooling/config.json")})
    dst = write_model_dir(model, tmp_path / "minilm-int8-embeddings", quant_recipe={"method": "rtn", "bits": 8})
    loaded = load_model(dst)
    table = loaded.embeddings.word_embeddings
    assert isinstance(table, QuantEmbedding) and (table.num_embeddings, table.embedding_dim) == (30522, 384)
    lo, hi = loaded.arrowengine_weights.mapping_range()
    assert all(lo <= b.data_ptr() < hi for b in (table.packed_weight, table.scales, table.zero_points))
    sentences = ["The meeting moved to Tuesday.", "Thank you", "ok", "I love hiking in the mountains on weekends!"]
    for kwargs in ({"precision": "fp32"}, {"precision": None}):
        cosine = np.sum(TextEncoder(dst, **kwargs).encode(sentences) * text_encoder.encode(sentences), axis=1)
        assert cosine.min() >= 0.999, (kwargs, cosine)
