"""Rollouts: sample G rewrites per query from the HF policy and keep what the loss needs.

One ``generate`` call samples every completion of a step (all prompts × G, prompts left-padded),
with the serving prompt (``service.policy.prompt``: chat template rendered to text, tokenised
without extra special tokens, stop strings), so training sees exactly the distribution that
serving would sample at temperature τ. Pure sampling: top-k and top-p are off, so the sampling
distribution is softmax(logits / τ) and the old log-probs below are its log-probs.

For each completion we keep:
* the generated token ids up to and including the token that ends it (EOS or the token that
  completes a stop string); later positions are padding and masked out of the loss;
* ``completion``: those tokens decoded (special tokens skipped) and ``text``: the completion
  cut before the first stop string, which is what serving parses (``PromptConfig.parse``);
* ``offsets``: the [start, end) characters of ``completion`` each token produced, so OSPO can
  map phrase credit onto tokens. First choice: re-tokenise ``completion`` with
  ``return_offsets_mapping`` and use those offsets if the ids equal the generated ones. Sampled
  text is often tokenised non-canonically ("usb" generated as "u"+"sb"), and then we fall back
  to decoding growing prefixes: token t spans [len(decode(ids[:t])), len(decode(ids[:t+1]))).
  A prefix that is not a prefix of the full text (a token ending inside a multi-byte
  character decodes to "�") gets an empty span and the next token takes the character.
  Special tokens always get empty spans. ``offsets_exact`` records which path was used;
* old log-probs log softmax(logits / τ)[token] from the raw logits ``generate`` returns.

Tensors live on the model's device (the trainer runs on the CPU, bench/gpu_step.py on a GPU).
``phase`` names the three parts of sampling for whoever times them (trainer/training/phases.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from service.policy.prompt import DEFAULT_PROMPT, PromptConfig
from trainer.training.phases import Phase, untimed

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Rollout:
    """One sampled completion of one prompt."""

    prompt_index: int  # index of its query in the step's query list
    query: str
    token_ids: list[int]  # (T_g,) generated ids, through the terminating token
    completion: str  # token_ids decoded, special tokens skipped
    text: str  # completion cut before the first stop string (what serving parses)
    # parsed answer (expand: the additions; replace: the new query), a verbatim substring of
    # ``text``; "" when the policy said nothing is needed; None when unusable
    rewrite: str | None
    finish_reason: str  # "stop" (EOS / stop string) or "length"
    offsets: np.ndarray  # (T_g, 2) int64 character spans of the tokens in ``completion``
    offsets_exact: bool  # True: re-tokenisation reproduced the ids; False: prefix decoding
    search_text: str  # what serving searches with: PromptConfig.search_text(query, rewrite)


@dataclass
class RolloutBatch:
    """All completions of a step; row b = prompt b // G, sample b % G.

    sequences:       (B, P + T) long — prompt left-padded to P, completion right-padded to T.
    attention_mask:  (B, P + T) long — 1 on real prompt and completion tokens.
    completion_mask: (B, T) bool — 1 on completion tokens (through the terminating token).
    logp_old:        (B, T) float32 — sampling log-probs, 0 on padding; None when the sampler
                     did not record them (a vLLM server): the update then takes the policy's
                     own log-probs (trainer/training/step.py ``old_logprobs``).
    All on the model's device.
    """

    rollouts: list[Rollout]
    sequences: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    logp_old: torch.Tensor | None
    prompt_length: int

    @property
    def n_tokens(self) -> int:
        return int(self.completion_mask.sum())


def prompt_token_ids(
    tokenizer: PreTrainedTokenizerBase, queries: Sequence[str], prompt: PromptConfig
) -> list[list[int]]:
    """Chat template rendered to text, then tokenised without extra special tokens (as vLLM)."""
    out = []
    for q in queries:
        text = tokenizer.apply_chat_template(
            prompt.build_messages(q), tokenize=False, add_generation_prompt=True
        )
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) ids and attention mask, padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            ids[b, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[b, width - len(r) :] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) positions counting real tokens only, as ``generate`` uses for left padding."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


# ---------------------------------------------------------------------------------------------
# Token bookkeeping
# ---------------------------------------------------------------------------------------------


def _prefix_ends(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], text: str) -> list[int]:
    """End character of each token in ``text`` by decoding growing prefixes (monotone)."""
    ends, prev = [], 0
    for t in range(len(ids)):
        prefix = tokenizer.decode(list(ids[: t + 1]), skip_special_tokens=True)
        prev = len(prefix) if len(prefix) >= prev and text.startswith(prefix) else prev
        ends.append(prev)
    return ends


def token_offsets(
    tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], text: str
) -> tuple[np.ndarray, bool]:
    """(T, 2) character spans of ``ids`` in ``text`` (their decoding) and whether they are exact.

    See the module docstring for the two paths. Special tokens get empty spans.
    """
    special = set(tokenizer.all_special_ids)
    regular = [i for i in ids if i not in special]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) == regular:
        spans = iter(enc["offset_mapping"])
        out, prev = [], 0
        for i in ids:
            if i in special:
                out.append((prev, prev))
            else:
                start, end = next(spans)
                out.append((start, end))
                prev = end
        return np.asarray(out, dtype=np.int64).reshape(-1, 2), True
    ends = _prefix_ends(tokenizer, ids, text)
    starts = [0, *ends[:-1]]
    return np.asarray(list(zip(starts, ends, strict=True)), dtype=np.int64).reshape(-1, 2), False


def _cut(
    tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], eos_id: int, stops: Sequence[str]
) -> tuple[int, str]:
    """How many generated tokens belong to the completion, and why it ended.

    Through the first EOS, or through the token that completes the first stop string, else all
    (finish "length"). Rows of a batch are padded with the pad token after they finish.
    """
    limit = next((t + 1 for t, i in enumerate(ids) if i == eos_id), None)
    body = list(ids[: (limit - 1) if limit is not None else len(ids)])
    text = tokenizer.decode(body, skip_special_tokens=True)
    hits = [(pos, s) for s in stops if s and (pos := text.find(s)) >= 0]
    if hits:
        pos, s = min(hits)
        ends = _prefix_ends(tokenizer, body, text)
        last_char = pos + len(s)
        n = next((t + 1 for t, e in enumerate(ends) if e >= last_char), len(body))
        return n, "stop"
    if limit is not None:
        return limit, "stop"
    return len(ids), "length"


def _make_rollout(
    tokenizer: PreTrainedTokenizerBase,
    prompt_index: int,
    query: str,
    generated: Sequence[int],
    eos_id: int,
    prompt: PromptConfig,
    max_chars: int,
) -> Rollout:
    n, finish = _cut(tokenizer, generated, eos_id, prompt.stop)
    ids = list(generated[:n])
    completion = tokenizer.decode(ids, skip_special_tokens=True)
    cut = min((i for i in (completion.find(s) for s in prompt.stop if s) if i >= 0), default=-1)
    text = completion[:cut] if cut >= 0 else completion
    rewrite = prompt.parse(text, query, truncated=finish == "length", max_chars=max_chars)
    offsets, exact = token_offsets(tokenizer, ids, completion)
    return Rollout(
        prompt_index=prompt_index,
        query=query,
        token_ids=ids,
        completion=completion,
        text=text,
        rewrite=rewrite,
        finish_reason=finish,
        offsets=offsets,
        offsets_exact=exact,
        search_text=prompt.search_text(query, rewrite),
    )


class RolloutSampler(Protocol):
    """What samples a step's rollouts: ``sample_rollouts`` below (in-process ``generate``) or
    ``trainer.training.served_rollouts.VllmRollouts`` (a vLLM server), called the same way."""

    def __call__(
        self,
        model: Any,
        tokenizer: Any,
        queries: Sequence[str],
        *,
        group_size: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        prompt: PromptConfig = DEFAULT_PROMPT,
        seed: int | None = None,
        max_chars: int = 256,
        phase: Phase = untimed,
    ) -> RolloutBatch: ...


# ---------------------------------------------------------------------------------------------
# Sampling and greedy decoding
# ---------------------------------------------------------------------------------------------


def _generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    prompt: PromptConfig,
    **kwargs: Any,
) -> tuple[Any, torch.Tensor]:
    """``generate`` on left-padded prompts; returns its output and the (B, P) prompt mask."""
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    input_ids, attention_mask = (t.to(model.device) for t in left_pad(prompt_ids, pad_id))
    return model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
        stop_strings=[s for s in prompt.stop if s] or None,
        tokenizer=tokenizer,
        return_dict_in_generate=True,
        **kwargs,
    ), attention_mask


@torch.no_grad()
def sample_rollouts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    prompt: PromptConfig = DEFAULT_PROMPT,
    seed: int | None = None,
    max_chars: int = 256,
    phase: Phase = untimed,
) -> RolloutBatch:
    """Sample ``group_size`` completions for every query in ONE ``generate`` call.

    ``seed`` reseeds torch's global generator first (HF sampling draws from it), which makes a
    run reproducible for a fixed thread count. ``phase`` wraps the generate, decode and
    old_logprobs parts (trainer/training/phases.py).
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0 for sampling")
    rows = [ids for ids in prompt_token_ids(tokenizer, queries, prompt) for _ in range(group_size)]
    with phase("generate"):
        if seed is not None:
            torch.manual_seed(seed)
        was_training = model.training
        model.eval()
        out, prompt_mask = _generate(
            model,
            tokenizer,
            rows,
            prompt,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            output_logits=True,
        )
        model.train(was_training)

    generated_ids = out.sequences[:, prompt_mask.shape[1] :].tolist()  # one copy, not per row
    with phase("decode"):
        batch = rollout_batch(
            tokenizer, queries, group_size, rows, generated_ids, prompt, max_chars, model.device
        )
    with phase("old_logprobs"):
        T = batch.completion_mask.shape[1]
        completion = batch.sequences[:, batch.prompt_length :]
        logp_old = torch.zeros(completion.shape, dtype=torch.float32, device=completion.device)
        for t in range(min(T, len(out.logits))):
            logp = torch.log_softmax(out.logits[t].float() / temperature, dim=-1)  # (B, V)
            logp_old[:, t] = logp.gather(1, completion[:, t : t + 1]).squeeze(1)
        logp_old[~batch.completion_mask] = 0.0
        batch.logp_old = logp_old
    return batch


def rollout_batch(
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    group_size: int,
    prompt_rows: Sequence[Sequence[int]],
    generated: Sequence[Sequence[int]],
    prompt: PromptConfig = DEFAULT_PROMPT,
    max_chars: int = 256,
    device: torch.device | str = "cpu",
) -> RolloutBatch:
    """The rollouts of a step from each row's prompt ids and generated ids, however sampled
    (``generate`` here, a vLLM server in trainer/training/served_rollouts.py); ``logp_old`` is None.

    prompt_rows, generated: (B,) row b = sample b % G of query b // G; ``generated`` may run
    past the end of a completion (padding after EOS): ``_cut`` finds where it ends.
    """
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    rollouts = [
        _make_rollout(
            tokenizer,
            b // group_size,
            queries[b // group_size],
            generated[b],
            tokenizer.eos_token_id,
            prompt,
            max_chars,
        )
        for b in range(len(prompt_rows))
    ]
    T = max(1, max(len(r.token_ids) for r in rollouts))
    completion = torch.full((len(rollouts), T), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(rollouts), T), dtype=torch.bool)
    for b, r in enumerate(rollouts):
        completion[b, : len(r.token_ids)] = torch.tensor(r.token_ids, dtype=torch.long)
        completion_mask[b, : len(r.token_ids)] = True
    prompt_ids, prompt_mask = left_pad(prompt_rows, pad_id)
    return RolloutBatch(
        rollouts=rollouts,
        sequences=torch.cat([prompt_ids, completion], dim=1).to(device),
        attention_mask=torch.cat([prompt_mask, completion_mask.long()], dim=1).to(device),
        completion_mask=completion_mask.to(device),
        logp_old=None,
        prompt_length=prompt_ids.shape[1],
    )


@torch.no_grad()
def greedy_rollouts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    prompt: PromptConfig = DEFAULT_PROMPT,
    max_chars: int = 256,
) -> list[Rollout]:
    """Greedy rewrites, as serving produces them (batched; fp32 ties aside, the same tokens)."""
    was_training = model.training
    model.eval()
    out_rollouts: list[Rollout] = []
    for start in range(0, len(queries), batch_size):
        chunk = list(queries[start : start + batch_size])
        out, prompt_mask = _generate(
            model,
            tokenizer,
            prompt_token_ids(tokenizer, chunk, prompt),
            prompt,
            do_sample=False,
            temperature=None,
            top_k=None,
            top_p=None,
            max_new_tokens=max_new_tokens,
        )
        generated = out.sequences[:, prompt_mask.shape[1] :]
        out_rollouts += [
            _make_rollout(
                tokenizer,
                start + i,
                q,
                generated[i].tolist(),
                tokenizer.eos_token_id,
                prompt,
                max_chars,
            )
            for i, q in enumerate(chunk)
        ]
    model.train(was_training)
    return out_rollouts


def completion_logprobs(
    model: PreTrainedModel,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(B, T) log-probs of the completion tokens under ``model`` (differentiable).

    sequences, attention_mask: (B, P + T) rows of a ``RolloutBatch`` (any subset of rows).
    Only the last T + 1 positions go through the LM head (``logits_to_keep``): the logits at
    positions P - 1 .. P + T - 2 predict completion tokens 0 .. T - 1.

    The prompt tokens all rows share (the serving prompt's system text and examples: ~170 of
    its ~200 tokens) go through the model once, not once per row: a forward over the shared
    prefix fills a KV cache that is repeated for every row, and each row's own tokens (the end
    of its prompt, its completion) run on top of it. Gradients reach the prefix through every
    row's copy, so log-probs and gradients are those of the row-by-row forward up to float
    rounding (tests/test_trainer_rollout.py), for P_shared + B·(P − P_shared + T) tokens of
    compute instead of B·(P + T).
    """
    T = sequences.shape[1] - prompt_length
    prompt_mask = attention_mask[:, :prompt_length]
    lengths = prompt_mask.sum(-1)  # (B,) real prompt tokens; prompts are left-padded
    shared = _shared_prefix_length(sequences[:, :prompt_length], lengths)
    if shared < MIN_SHARED_PREFIX:
        logits = model(
            input_ids=sequences,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            logits_to_keep=T + 1,
        ).logits[:, :-1]  # (B, T, V)
    else:
        B = sequences.shape[0]
        first = prompt_length - int(lengths[0])
        prefix = sequences[:1, first : first + shared]  # (1, S)
        cache = model(
            input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True
        ).past_key_values
        cache.batch_repeat_interleave(B)
        # Each row's rest: the last (length − S) prompt tokens, right-aligned in a window of
        # the widest rest, then the completion; window positions before a row's rest are
        # masked (that row's copy of the prefix or its padding).
        tail = lengths - shared  # (B,)
        width = int(tail.max())
        window = sequences[:, prompt_length - width :]
        window_mask = attention_mask[:, prompt_length - width :].clone()
        columns = torch.arange(width, device=sequences.device)
        window_mask[:, :width] = (columns[None, :] >= (width - tail)[:, None]).long()
        ones = torch.ones((B, shared), dtype=window_mask.dtype, device=window_mask.device)
        full_mask = torch.cat([ones, window_mask], dim=1)  # (B, S + width + T)
        logits = model(
            input_ids=window,
            attention_mask=full_mask,
            position_ids=position_ids(full_mask)[:, shared:],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=T + 1,
        ).logits[:, :-1]  # (B, T, V)
    targets = sequences[:, prompt_length:]  # (B, T)
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)


MIN_SHARED_PREFIX = 8  # shorter shared prefixes are not worth a second forward call


def _shared_prefix_length(prompts: torch.Tensor, lengths: torch.Tensor) -> int:
    """Tokens at the start of every row's (left-padded) prompt that all rows have in common,
    leaving each row at least its last prompt token (its logits predict the completion)."""
    P, shortest = prompts.shape[1], int(lengths.min())
    if shortest < 2:
        return 0
    aligned = torch.stack(
        [prompts[b, P - int(n) : P - int(n) + shortest] for b, n in enumerate(lengths)]
    )  # (B, shortest) each prompt's first tokens
    same = (aligned == aligned[:1]).all(0)  # (shortest,)
    differs = (~same).nonzero()
    common = int(differs[0]) if len(differs) else shortest
    return min(common, shortest - 1)
