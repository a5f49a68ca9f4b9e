"""A peft LoRA card on the real SmolLM2-135M of ``models/`` (30 layers, grouped-query v_proj): the card file, and
the card applied to / removed from ``arrowengine.LLM("models/smollm2-135m-instruct", precision="fp32")`` without
reloading the base, matching peft's own outputs. (Training is covered on the tiny model in test_card.py and at
full scale by scripts/federation_eval.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from federation.adapt import apply_card, remove_card
from federation.card import LoRACard
from federation.checksum import model_checksum

MODEL = Path(__file__).resolve().parents[2] / "models" / "smollm2-135m-instruct"


@pytest.mark.slow
def test_card_on_smollm2_applies_to_the_mapped_llm_and_comes_off(tmp_path):
    if not (MODEL / "weights.parquet").is_file():
        pytest.skip("models/smollm2-135m-instruct is missing; run python scripts/fetch_models.py")
    from peft import LoraConfig, get_peft_model

    from arrowengine.runtime.llm import LLM
    from arrowengine.runtime.loading import load_model

    llm = LLM(MODEL, precision="fp32")  # mapped once (fp32: compared with peft's fp32 forward); the card comes and goes
    ids = llm.tokenizer("Hi! How was your weekend? I went hiking with my dog.")["input_ids"]
    base_logits = llm.logits(ids)
    model = get_peft_model(load_model(MODEL), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                         lora_dropout=0.0))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # as after training (peft starts B at zero; a backward pass on 135M is too slow here)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.02 * torch.randn(param.shape, generator=gen))
    batch = torch.tensor([ids])
    card = LoRACard.from_peft(model, adapter="chat", base_model=MODEL.name, base_checksum=model_checksum(MODEL))
    assert (card.meta.rank, card.meta.alpha, card.meta.target_modules) == (4, 8.0, ("q_proj", "v_proj"))
    assert len(card.modules()) == 2 * 30 and card.meta.base_checksum == model_checksum(MODEL)
    loaded = LoRACard.load(card.save(tmp_path / "chat.parquet"), verify=True)
    assert loaded.checksum == card.checksum
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=batch).logits[0]
    assert float((expected - base_logits).abs().max()) > 0.05
    assert apply_card(llm, loaded) == 60
    torch.testing.assert_close(llm.logits(ids), expected, rtol=1e-3, atol=1e-3)
    assert remove_card(llm, "chat") == 60
    assert torch.equal(llm.logits(ids), base_logits)
