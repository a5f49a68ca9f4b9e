"""LoRA cards: the on-disk format (golden metadata and tensor bytes), peft round trip, and applying / removing a
card on a loaded ``arrowengine.LLM`` without reloading the base."""

from __future__ import annotations

import pytest
import torch

from arrowengine.format.reader import WeightFile
from arrowengine.format.writer import write_weights
from arrowengine.runtime.llm import LLM
from federation.adapt import apply_card, remove_card
from federation.card import CardMeta, LoRACard
from federation.errors import CardError
from tests.federation.support import peft_model, tiny_card

GOLDEN_META = ('{"adapter":"chat","alpha":2.0,"base_checksum":"00ff","base_model":"tiny","format":1,'
               '"parent_version":3,"rank":1,"target_modules":["q_proj","v_proj"],"version":4}')


def _fixed_card() -> LoRACard:
    meta = CardMeta("chat", "tiny", "00ff", 1, 2.0, ("v_proj", "q_proj"), version=4, parent_version=3)
    a = torch.arange(4, dtype=torch.float32).reshape(1, 4) / 4
    b = torch.tensor([[0.5], [-1.0]], dtype=torch.float32)
    return LoRACard(meta, {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": a,
                           "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": b})


def test_card_file_golden_bytes(tmp_path):
    card = _fixed_card()
    path = card.save(tmp_path / "card.parquet")
    weights = WeightFile.open(path)
    assert weights.metadata["federation.card"] == GOLDEN_META
    assert weights.model_type == "lora_card" and weights.schema_version == 1
    raw = bytes(weights.raw_bytes("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"))
    assert raw.hex() == "000000000000803e0000003f0000403f"  # 0, .25, .5, .75 as little-endian float32
    assert bytes(weights.raw_bytes(sorted(weights)[1])).hex() == "0000003f000080bf"  # B: 0.5, -1.0
    loaded = LoRACard.load(path, verify=True)
    assert loaded.meta == card.meta and loaded.checksum == card.checksum


def test_meta_json_is_canonical_and_ignores_unknown_keys():
    meta = _fixed_card().meta
    assert meta.to_json() == GOLDEN_META
    assert CardMeta.from_json(GOLDEN_META[:-1] + ',"future_key":1}') == meta
    with pytest.raises(CardError, match="card format 2; this build reads 1"):
        CardMeta.from_json(GOLDEN_META.replace('"format":1', '"format":2'))


def test_peft_round_trip(tmp_path):
    card = tiny_card(0)
    assert card.meta.rank == 4 and card.meta.target_modules == ("q_proj", "v_proj")
    assert len(card.modules()) == 4  # 2 layers x q, v
    loaded = LoRACard.load(card.save(tmp_path / "c.parquet"))
    other = peft_model(seed=7)
    loaded.load_into_peft(other)
    again = LoRACard.from_peft(other, adapter="chat", base_model="tiny-llama", base_checksum=card.meta.base_checksum)
    assert again.checksum == card.checksum


def test_apply_and_remove_on_a_loaded_llm_matches_peft_and_restores_the_base():
    model = peft_model(0)
    card = LoRACard.from_peft(model, adapter="chat", base_model="tiny", base_checksum="x")
    ids = list(range(3, 19))
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits[0]
        base_model = model.get_base_model()
        with model.disable_adapter():
            base_logits = model(input_ids=torch.tensor([ids])).logits[0]
    llm = LLM.from_model(base_model, tokenizer=_NoTokenizer())  # peft wraps q/v; LLM reads the base weights
    before = llm.logits(ids)
    torch.testing.assert_close(before, base_logits, rtol=1e-5, atol=1e-5)
    assert float((expected - base_logits).abs().max()) > 0.05  # the adapter really changes the outputs
    assert apply_card(llm, card) == 4
    torch.testing.assert_close(llm.logits(ids), expected, rtol=1e-4, atol=1e-4)
    assert apply_card(llm, card) == 4  # a second apply replaces, never stacks
    torch.testing.assert_close(llm.logits(ids), expected, rtol=1e-4, atol=1e-4)
    assert remove_card(llm, "chat") == 4
    assert torch.equal(llm.logits(ids), before)  # the base weights were never touched
    fused = LLM.from_model(base_model, tokenizer=_NoTokenizer(), fuse_projections=True)  # Q/K/V in one matrix
    apply_card(fused, card)  # each term lands on the output rows of its own part
    torch.testing.assert_close(fused.logits(ids), expected, rtol=1e-4, atol=1e-4)


def test_bad_cards_are_refused(tmp_path):
    card = _fixed_card()
    name = next(iter(card.tensors))
    with pytest.raises(CardError, match="is not a LoRA matrix"):
        LoRACard(card.meta, {"model.embed.weight": torch.zeros(2, 2)})
    with pytest.raises(CardError, match="not rank 1"):
        LoRACard(card.meta, {name: torch.zeros(2, 4), name.replace("lora_A", "lora_B"): torch.zeros(2, 2)})
    with pytest.raises(CardError, match="adapter name"):
        CardMeta("a/b", "m", "c", 1, 1.0, ())
    plain = write_weights(tmp_path / "w.parquet", {"x": torch.zeros(2)}).path
    with pytest.raises(CardError, match="not a LoRA card"):
        LoRACard.load(plain)


class _NoTokenizer:
    pad_token_id = 0
    eos_token_id = 2


def test_card_of_a_peft_training_step_matches_the_trained_model():
    from peft import LoraConfig, get_peft_model

    from tests.arrowengine.llm_support import tiny_llama

    model = get_peft_model(tiny_llama(0), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                     lora_dropout=0.0))
    before = LoRACard.from_peft(model, adapter="chat", base_model="tiny", base_checksum="x")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = torch.tensor([list(range(3, 19))])
    for _ in range(3):
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    card = LoRACard.from_peft(model, adapter="chat", base_model="tiny", base_checksum="x", version=1,
                              parent_version=0)
    assert card.checksum != before.checksum and all(float(b.abs().max()) > 0 for _, b in card.modules().values())
    llm = LLM.from_model(model.get_base_model(), tokenizer=_NoTokenizer())
    apply_card(llm, card)
    with torch.no_grad():
        expected = model(input_ids=batch).logits[0]
    torch.testing.assert_close(llm.logits(batch[0].tolist()), expected, rtol=1e-4, atol=1e-4)
