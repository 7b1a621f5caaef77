"""OSPO: Owen-Shapley Policy Optimization (arXiv 2601.08403), advantage shaping and loss.

OSPO is GRPO whose *sequence* advantage is redistributed over the *tokens* of the rewrite
according to how much each phrase of the rewrite contributed to the retrieval reward
(Shapley / Owen attributions computed elsewhere). This file turns those attributions into
per-token advantages and implements the clipped surrogate loss. It is written to be read top
to bottom; every function is pure. numpy for the credit math, torch only in the loss.

Notation, for one prompt and a group of G sampled completions (rollouts):

    R_g            reward of rollout g (NDCG, in [0, 1])
    R(q)           reward of the raw query (the floor: search with the shopper's own words)
    A_g            GRPO advantage  (R_g - mean R) / (std R + eps)
    players        character spans (start, end) of phrases inside the parsed rewrite text
                   (in expand mode: the policy's added phrases only)
    phi_i          attribution of player i, signed; v(S) = R(q ⊕ S) - R(q), so for exact
                   estimators sum_i phi_i = R_g - R(q)
    f_{t,i}        share of player i's characters that token t covers (sum_t f_{t,i} = 1)
    L_g            number of tokens of the completion that lie in the rewrite span

"signed" (default) — the credit of a token is psi_t = sum_i phi_i f_{t,i} (signed, sums to
sum_i phi_i), and

    Â_{g,t} = A_g + (L_g psi_t - sum_s psi_s) / sigma,   sigma = max(std R, min_std)

on rewrite tokens. The correction sums to zero over the L_g tokens, so the mean of Â is
exactly A_g. With exact efficiency, Â_{g,t} = (L_g psi_t + R(q) - mean R) / sigma: each token
is judged as if the whole rewrite were made of phrases like its own, against the raw query's
own standing (R(q) - mean R) / sigma, which is the advantage an empty answer ("NONE") gets. A
phrase that hurts (phi_i < 0) therefore gets an advantage below that of adding nothing: it is
pushed down relative to leaving it out, and below zero whenever the group on average does not
do worse than the raw query. A helpful phrase is pushed up by the same rule.

"prop" / "rank" (the paper's shaping, kept for parity) —

    w_t            token weights over the rewrite tokens, w >= 0, sum_t w_t = 1, from the
                   positive credits only (prop: ∝ phi_i⁺; rank: ∝ rank of phi_i⁺)
    Â_{g,t}        token advantage  A_g * L_g * w_t   on rewrite tokens

Because sum_t w_t = 1, the mean of Â over the L_g rewrite tokens is exactly A_g here too: OSPO
moves advantage between the rewrite's tokens but adds no length bias relative to GRPO.

Documented decisions
--------------------
* Negative credit. "signed": used as is (above). "prop"/"rank": clipped at 0 before
  normalising, as in the paper: a phrase that hurt gets no share (its tokens get Â = 0 when
  A_g > 0, so it is not reinforced, but not pushed down either).
* sigma. The credit correction is in units of the group's reward spread, like A_g. A floor
  (``min_std``, 0.05 NDCG) keeps a group whose rewards are (almost) equal from turning small
  credit differences into huge advantages; such a group still carries phrase-level signal (a
  helpful and a harmful phrase can cancel in R_g), which GRPO alone would discard.
* Sign of A_g (``negative_mode``). "same" (default, as in the paper): the sequence advantage
  is redistributed by the same weights whatever its sign, so with A_g < 0 the tokens of the
  *highest*-credit phrase receive the most negative advantage. "inverse": when A_g < 0 the
  weights come from the *blame* score  b_i = max_j φ_j − φ_i  (raw φ, not clipped), so the
  phrase that helped most is pushed down least and the most harmful phrase most. If all φ are
  equal the blame is shared equally between players.
* Rank shares (``mode="rank"``). Among players with a positive score (credit, or blame in
  inverse mode), the lowest gets rank 1 and the highest rank m; ties get the average of their
  ranks. Player share = rank / Σ ranks. Players with score ≤ 0 get share 0.
* Spreading a player's share over tokens. A player's share is divided among the tokens whose
  character span overlaps it, in proportion to the overlap length. A token that straddles
  two players receives part of both. Tokens of the rewrite that overlap no player (e.g. a
  separating comma) get weight 0 but still count in L_g. A player that overlaps no token is
  dropped and the remaining weights are renormalised.
* Zero-reward rollouts (``zero_reward``) are decided on the *absolute* reward R_g ≤ 0 (the
  search found nothing relevant), never on R_g - R(q). "grpo" (default): the rollout is
  treated exactly like GRPO, A_g on every token (keeps GRPO's negative signal for failed
  rewrites; ignores ``outside``). "zero" (paper's code): Â = 0 on every token, no gradient.
* No attribution signal: no player, or every φ_i = 0 ("signed"), or no φ_i > 0 ("prop" and
  "rank", checked on φ independently of the sign of A_g and of ``negative_mode``): plain A_g.
* Rewrite not located in the completion (span None, or no token overlaps the span): the
  rollout is plain GRPO (A_g on every token), except that the "zero" rule above still wins
  when R_g ≤ 0.
* Tokens outside the rewrite span (chat markup, <rewrite> tags, EOS) get A_g
  (``outside="sequence"``, default) or 0 (``outside="zero"``).
* Optional clipping of Â to ±clip_c · std(A) over the group, applied last. Clipping can break
  the mean-preservation property above; it is off by default.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # torch is only needed by the loss; imported lazily there
    import torch

Span = tuple[int, int]
Offsets = list[tuple[int, int]] | np.ndarray


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdvantageConfig:
    """How the sequence advantage is turned into token advantages.

    mode:          "signed" – A_g plus the signed credit correction (module docstring);
                   "prop" – token weights proportional to (clipped) credit;
                   "rank" – player shares proportional to credit rank 1..m (ties averaged).
    clip_c:        clip token advantages to ±clip_c · std(A_group); None = no clipping.
    zero_reward:   rollouts without attribution signal (R ≤ 0 or no positive credit):
                   "grpo" – plain A_g on every token; "zero" – no gradient at all.
    outside:       tokens outside the rewrite span: "sequence" – A_g; "zero" – 0.
    negative_mode: weights used when A_g < 0: "same" – same as for A_g > 0 (paper);
                   "inverse" – blame max(φ) − φ_i, most harmful phrase pushed down most.
    eps:           added to std(R) in the GRPO normalisation.
    min_std:       floor of sigma in "signed" mode (NDCG units).
    """

    mode: Literal["signed", "prop", "rank"] = "signed"
    clip_c: float | None = None
    zero_reward: Literal["grpo", "zero"] = "grpo"
    outside: Literal["sequence", "zero"] = "sequence"
    negative_mode: Literal["same", "inverse"] = "same"
    eps: float = 1e-6
    min_std: float = 0.05

    def __post_init__(self) -> None:
        if self.mode not in ("signed", "prop", "rank"):
            raise ValueError(f"mode must be 'signed', 'prop' or 'rank', got {self.mode!r}")
        if self.min_std <= 0:
            raise ValueError(f"min_std must be positive, got {self.min_std!r}")
        if self.zero_reward not in ("grpo", "zero"):
            raise ValueError(f"zero_reward must be 'grpo' or 'zero', got {self.zero_reward!r}")
        if self.outside not in ("sequence", "zero"):
            raise ValueError(f"outside must be 'sequence' or 'zero', got {self.outside!r}")
        if self.negative_mode not in ("same", "inverse"):
            raise ValueError(
                f"negative_mode must be 'same' or 'inverse', got {self.negative_mode!r}"
            )
        if self.clip_c is not None and self.clip_c <= 0:
            raise ValueError(f"clip_c must be positive or None, got {self.clip_c!r}")
        if self.eps <= 0:
            raise ValueError(f"eps must be positive, got {self.eps!r}")


# ---------------------------------------------------------------------------------------------
# 1. GRPO sequence advantages
# ---------------------------------------------------------------------------------------------


def grpo_advantages(rewards: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Group-normalised advantages.

    rewards: (G,) rewards of one prompt's group.
    returns: (G,) float64, (R - mean R) / (std R + eps), std with ddof=0.
             A group whose rewards are all equal (or G = 1) gets exact zeros.
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if r.size == 0 or np.all(r == r[0]):
        return np.zeros_like(r)
    return (r - r.mean()) / (r.std() + eps)


# ---------------------------------------------------------------------------------------------
# 2. Where is the rewrite inside the decoded completion?
# ---------------------------------------------------------------------------------------------


def locate_span(completion: str, rewrite: str) -> Span | None:
    """Character span [start, end) of ``rewrite`` inside ``completion``.

    Exact match first, taking the *last* occurrence (the parsed rewrite is the final tagged
    answer; an earlier mention, e.g. in a thought, is not it). Otherwise a whitespace-
    insensitive match (all whitespace removed on both sides), mapped back to offsets in the
    original completion; the span then starts and ends on non-whitespace characters.
    Returns None if the rewrite is empty (after removing whitespace) or not found.
    """
    if not rewrite or not rewrite.strip():
        return None
    start = completion.rfind(rewrite)
    if start >= 0:
        return (start, start + len(rewrite))
    # Whitespace-insensitive: compact both strings, remember original indices of completion.
    keep = [i for i, ch in enumerate(completion) if not ch.isspace()]
    compact_completion = "".join(completion[i] for i in keep)
    compact_rewrite = "".join(ch for ch in rewrite if not ch.isspace())
    pos = compact_completion.rfind(compact_rewrite)
    if pos < 0:
        return None
    return (keep[pos], keep[pos + len(compact_rewrite) - 1] + 1)


def align_segments(completion: str, span: Span, rewrite: str, segments: list[Span]) -> list[Span]:
    """Map player spans relative to ``rewrite`` onto spans relative to ``completion[span]``.

    Identity when the match was exact. After a whitespace-insensitive match the i-th
    non-whitespace character of the rewrite is the i-th of ``completion[span]``; a segment is
    mapped to the range from its first to its last non-whitespace character. A segment made
    only of whitespace becomes empty (it then receives no tokens).
    """
    located = completion[span[0] : span[1]]
    if located == rewrite:
        return [(int(s), int(e)) for s, e in segments]
    rw_idx = [i for i, ch in enumerate(rewrite) if not ch.isspace()]
    cp_idx = [i for i, ch in enumerate(located) if not ch.isspace()]
    if len(rw_idx) != len(cp_idx):
        raise ValueError("span does not match rewrite up to whitespace")
    out: list[Span] = []
    for s, e in segments:
        k0, k1 = bisect.bisect_left(rw_idx, s), bisect.bisect_left(rw_idx, e)
        if k0 >= k1:
            pos = cp_idx[k0] if k0 < len(cp_idx) else len(located)
            out.append((pos, pos))
        else:
            out.append((cp_idx[k0], cp_idx[k1 - 1] + 1))
    return out


# ---------------------------------------------------------------------------------------------
# 3. From player scores to token weights
# ---------------------------------------------------------------------------------------------


def _as_offsets(token_offsets: Offsets) -> np.ndarray:
    """(T, 2) int64 array of [start, end) character offsets."""
    return np.asarray(token_offsets, dtype=np.int64).reshape(-1, 2)


def _overlap(tok: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Overlap lengths in characters. tok: (T, 2), seg: (n, 2) -> (T, n), >= 0."""
    lo = np.maximum(tok[:, None, 0], seg[None, :, 0])
    hi = np.minimum(tok[:, None, 1], seg[None, :, 1])
    return np.clip(hi - lo, 0, None)


def rewrite_mask(token_offsets: Offsets, span: Span | None) -> np.ndarray:
    """(T,) bool: tokens whose character span overlaps the rewrite span (by ≥ 1 character).

    Zero-length offsets, as HF tokenizers give special tokens, never overlap.
    """
    tok = _as_offsets(token_offsets)
    if span is None:
        return np.zeros(len(tok), dtype=bool)
    return _overlap(tok, np.asarray([span], dtype=np.int64))[:, 0] > 0


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, smallest value gets 1, ties get the average of their ranks. (n,)->(n,)"""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)
    starts = ends - counts + 1
    return ((starts + ends) / 2.0)[inverse.reshape(-1)]


def player_shares(scores: np.ndarray, mode: Literal["prop", "rank"] = "prop") -> np.ndarray:
    """Share of each player, (n,) -> (n,), non-negative.

    Only players with score > 0 get a share. "prop": share ∝ score. "rank": share ∝ rank
    among the positive players (1 = lowest, ties averaged). Sums to 1, or all zeros when no
    score is positive.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos = s > 0
    shares = np.zeros_like(s)
    if not pos.any():
        return shares
    if mode == "prop":
        shares[pos] = s[pos]
    elif mode == "rank":
        shares[pos] = _average_ranks(s[pos])
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return shares / shares.sum()


def spread_to_tokens(
    token_offsets: Offsets, span_offset: int, segments: list[Span], shares: np.ndarray
) -> np.ndarray:
    """Distribute player shares over tokens by character-overlap share.

    token_offsets: (T, 2) offsets in completion characters.
    span_offset:   where the rewrite starts in the completion; segments are relative to it.
    segments:      (n,) player spans [start, end) relative to the rewrite.
    shares:        (n,) player shares.
    returns:       (T,) token weights; sums to Σ shares of the players that overlap ≥ 1 token.
    """
    tok = _as_offsets(token_offsets)
    seg = np.asarray(segments, dtype=np.int64).reshape(-1, 2) + int(span_offset)
    shares = np.asarray(shares, dtype=np.float64).reshape(-1)
    if len(seg) != len(shares):
        raise ValueError(f"{len(seg)} segments but {len(shares)} player values")
    if len(tok) == 0 or len(seg) == 0:
        return np.zeros(len(tok), dtype=np.float64)
    ov = _overlap(tok, seg).astype(np.float64)  # (T, n)
    per_player = ov.sum(axis=0)  # (n,)
    frac = np.divide(ov, per_player, out=np.zeros_like(ov), where=per_player > 0)  # (T, n)
    return frac @ shares  # (T,)


def _clip_segments(segments: list[Span] | None, length: int | None) -> list[Span]:
    """Clamp rewrite-relative segments into [0, length] so no credit leaks out of the span."""
    if not segments:
        return []
    if length is None:
        return [(int(s), int(e)) for s, e in segments]
    return [(min(max(int(s), 0), length), min(max(int(e), 0), length)) for s, e in segments]


def _normalised_weights(
    token_offsets: Offsets,
    span_offset: int,
    segments: list[Span],
    shares: np.ndarray,
) -> np.ndarray:
    """(T,) weights summing to 1 over tokens, or all zeros when nothing could be placed."""
    w = spread_to_tokens(token_offsets, span_offset, segments, shares)
    total = w.sum()
    return w / total if total > 0 else np.zeros_like(w)


# ---------------------------------------------------------------------------------------------
# 4. Token advantages of one rollout, and of a group
# ---------------------------------------------------------------------------------------------


def token_advantages(
    A_g: float,
    reward: float,
    token_offsets: Offsets,
    span: Span | None,
    segments: list[Span] | None,
    phi: np.ndarray | None,
    cfg: AdvantageConfig,
    adv_std: float | None = None,
    reward_std: float = 0.0,
) -> np.ndarray:
    """Token advantages Â (T,) of one rollout (see module docstring for the rules).

    A_g:           GRPO advantage of the rollout.
    reward:        its reward R_g.
    token_offsets: (T, 2) character offsets of the completion tokens.
    span:          [start, end) of the rewrite in the completion, or None if not located.
    segments:      (n,) player spans relative to ``completion[span[0]:span[1]]``
                   (use ``align_segments`` after a whitespace-insensitive match).
    phi:           (n,) player attributions, or None if not computed.
    adv_std:       std of the group's A, the unit of ``cfg.clip_c``; required if clip_c set.
    reward_std:    std of the group's R ("signed" mode: sigma = max(reward_std, min_std)).
    returns:       (T,) float64.
    """
    tok = _as_offsets(token_offsets)
    T = len(tok)
    A_g = float(A_g)
    phi_arr = np.zeros(0) if phi is None else np.asarray(phi, dtype=np.float64).reshape(-1)
    segs = _clip_segments(segments, None if span is None else span[1] - span[0])
    if len(segs) != len(phi_arr):
        raise ValueError(f"{len(segs)} segments but {len(phi_arr)} player values")

    in_rw = rewrite_mask(tok, span)
    L = int(in_rw.sum())
    plain = np.full(T, A_g, dtype=np.float64)
    no_signal = not np.any(phi_arr != 0) if cfg.mode == "signed" else not np.any(phi_arr > 0)

    if reward <= 0 and cfg.zero_reward == "zero":
        adv = np.zeros(T, dtype=np.float64)
    elif reward <= 0 or no_signal or span is None or L == 0:
        adv = plain  # plain GRPO for this rollout
    elif cfg.mode == "signed":
        psi = spread_to_tokens(tok, span[0], segs, phi_arr) * in_rw  # (T,) signed credit
        sigma = max(float(reward_std), cfg.min_std)
        correction = (L * psi - psi.sum()) / sigma
        adv = np.where(in_rw, A_g + correction, A_g if cfg.outside == "sequence" else 0.0)
    else:
        if A_g < 0 and cfg.negative_mode == "inverse":
            scores = phi_arr.max() - phi_arr  # blame
            if not np.any(scores > 0):
                scores = np.ones_like(phi_arr)  # all φ equal: equal blame
        else:
            scores = np.clip(phi_arr, 0.0, None)  # credit
        w = _normalised_weights(tok, span[0], segs, player_shares(scores, cfg.mode))
        if w.sum() == 0:  # no player overlaps a token: fall back like "no signal"
            adv = plain if cfg.zero_reward == "grpo" else np.zeros(T)
        else:
            outside = A_g if cfg.outside == "sequence" else 0.0
            adv = np.where(in_rw, A_g * L * w, outside)

    if cfg.clip_c is not None:
        if adv_std is None:
            raise ValueError("adv_std is required when clip_c is set")
        bound = cfg.clip_c * float(adv_std)
        adv = np.clip(adv, -bound, bound)
    return adv


def group_token_advantages(
    rewards: np.ndarray,
    completions: list[str],
    rewrites: list[str | None],
    token_offsets: list[Offsets],
    segments: list[list[Span] | None],
    phis: list[np.ndarray | None],
    cfg: AdvantageConfig,
) -> list[np.ndarray]:
    """Token advantages for one prompt's group of G rollouts.

    rewards:       (G,) rewards.
    completions:   G decoded completion texts.
    rewrites:      G parsed rewrite texts (None when parsing failed).
    token_offsets: G arrays (T_g, 2), offsets of each completion's tokens in its text.
    segments:      G lists of player spans relative to the parsed rewrite (None if absent).
    phis:          G arrays (n_g,) of attributions (None if not computed).
    returns:       G arrays (T_g,) of token advantages (ragged; see ``pad_advantages``).
    """
    G = len(completions)
    args = (rewrites, token_offsets, segments, phis)
    if len(rewards) != G or any(len(a) != G for a in args):
        raise ValueError("all per-rollout inputs must have the same length G")
    A = grpo_advantages(np.asarray(rewards, dtype=np.float64), cfg.eps)
    adv_std = float(A.std())
    reward_std = float(np.std(np.asarray(rewards, dtype=np.float64)))
    out = []
    for g in range(G):
        span = None if rewrites[g] is None else locate_span(completions[g], rewrites[g])
        segs = segments[g]
        if span is not None and segs:
            segs = align_segments(completions[g], span, rewrites[g], segs)
        out.append(
            token_advantages(
                A[g], rewards[g], token_offsets[g], span, segs, phis[g], cfg, adv_std, reward_std
            )
        )
    return out


def pad_advantages(
    advantages: list[np.ndarray], length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad ragged (T_g,) arrays into adv (G, T) float32 and mask (G, T) bool."""
    T = max((len(a) for a in advantages), default=0) if length is None else length
    adv = np.zeros((len(advantages), T), dtype=np.float32)
    mask = np.zeros((len(advantages), T), dtype=bool)
    for g, a in enumerate(advantages):
        n = min(len(a), T)
        adv[g, :n] = a[:n]
        mask[g, :n] = True
    return adv, mask


# ---------------------------------------------------------------------------------------------
# 5. Clipped surrogate loss (torch)
# ---------------------------------------------------------------------------------------------


def clipped_surrogate_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_clip: float = 0.2,
    norm: Literal["dapo", "seq"] = "dapo",
    logp_ref: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO/GRPO clipped surrogate with token advantages.

    logp_new:   (B, T) log-probs of the sampled tokens under the policy being trained.
    logp_old:   (B, T) log-probs under the policy that sampled them (no grad).
    advantages: (B, T) token advantages Â.
    mask:       (B, T) 1/True on active (completion, non-padding) tokens.
    eps_clip:   ratio clip ε.
    norm:       "dapo" – sum over all active tokens of the batch / their count;
                "seq"  – mean over each sequence's active tokens, then mean over sequences
                         that have at least one active token.
    logp_ref:   (B, T) reference-model log-probs for the KL penalty (optional).
    beta:       weight of the k3 KL estimator exp(ref − new) − (ref − new) − 1.
    returns:    scalar loss, and stats: clip_frac (share of active tokens where the clipped
                branch is taken and carries no gradient), kl (mean k3 over active tokens, 0
                without ref), ratio_mean, n_tokens.
    """
    import torch

    if norm not in ("dapo", "seq"):
        raise ValueError(f"norm must be 'dapo' or 'seq', got {norm!r}")
    active = mask.bool()
    m = active.to(logp_new.dtype)
    adv = advantages.to(logp_new.dtype)
    zero = torch.zeros_like(logp_new)

    # Masked positions may hold padding garbage: zero their log-ratio so exp() stays finite.
    log_ratio = torch.where(active, logp_new - logp_old, zero)
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.clamp(ratio, 1.0 - eps_clip, 1.0 + eps_clip)
    per_token = -torch.minimum(ratio * adv, clipped_ratio * adv)  # (B, T)

    kl = None
    if logp_ref is not None:
        d = torch.where(active, logp_ref - logp_new, zero)
        kl = torch.exp(d) - d - 1.0  # (B, T), k3 estimator, >= 0
        if beta != 0.0:
            per_token = per_token + beta * kl
    per_token = per_token * m

    if norm == "dapo":
        loss = per_token.sum() / m.sum().clamp(min=1.0)
    else:
        n_seq = m.sum(dim=-1)  # (B,)
        seq_loss = per_token.sum(dim=-1) / n_seq.clamp(min=1.0)  # (B,)
        has = (n_seq > 0).to(seq_loss.dtype)
        loss = (seq_loss * has).sum() / has.sum().clamp(min=1.0)

    with torch.no_grad():
        n = m.sum().clamp(min=1.0)
        is_clipped = ((ratio < 1.0 - eps_clip) & (adv < 0)) | ((ratio > 1.0 + eps_clip) & (adv > 0))
        stats = {
            "clip_frac": float((is_clipped & active).sum() / n),
            "kl": 0.0 if kl is None else float((kl * m).sum() / n),
            "ratio_mean": float((ratio * m).sum() / n),
            "n_tokens": float(m.sum()),
        }
    return loss, stats
