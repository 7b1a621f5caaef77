"""Tests for trainer/method/ospo.py: OSPO advantage shaping and the clipped surrogate loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.method.ospo import (
    AdvantageConfig,
    align_segments,
    clipped_surrogate_loss,
    group_token_advantages,
    grpo_advantages,
    locate_span,
    pad_advantages,
    player_shares,
    rewrite_mask,
    token_advantages,
)

# ---------------------------------------------------------------------------------------------
# Hand-made example
#
#   completion: "<rewrite>wireless earbuds, noise cancelling</rewrite>"
#                0        9                25 27               43        53
#   players (relative to the rewrite): "wireless earbuds" (0, 16), "noise cancelling" (18, 34)
# ---------------------------------------------------------------------------------------------

REWRITE = "wireless earbuds, noise cancelling"
COMPLETION = f"<rewrite>{REWRITE}</rewrite>"
SEGMENTS = [(0, 16), (18, 34)]
# BPE-like offsets: leading spaces belong to the following word.
HAND_OFFSETS = [
    (0, 9),  # <rewrite>
    (9, 17),  # wireless
    (17, 25),  # " earbuds"
    (25, 26),  # ,
    (26, 32),  # " noise"
    (32, 43),  # " cancelling"
    (43, 53),  # </rewrite>
    (0, 0),  # EOS (special token: empty offsets)
]
IN_REWRITE = np.array([False, True, True, True, True, True, False, False])


def test_hand_example_setup():
    assert COMPLETION[9:43] == REWRITE
    assert [REWRITE[s:e] for s, e in SEGMENTS] == ["wireless earbuds", "noise cancelling"]
    assert locate_span(COMPLETION, REWRITE) == (9, 43)
    assert rewrite_mask(HAND_OFFSETS, (9, 43)).tolist() == IN_REWRITE.tolist()


@pytest.mark.parametrize("outside", ["sequence", "zero"])
@pytest.mark.parametrize("mode", ["prop", "rank"])
def test_hand_example_credit_lands_on_right_tokens(outside, mode):
    cfg = AdvantageConfig(mode=mode, outside=outside)
    phi = np.array([0.0, 0.6])
    A = 1.5
    adv = token_advantages(A, 0.6, HAND_OFFSETS, (9, 43), SEGMENTS, phi, cfg)
    L = 5
    # "wireless earbuds" (φ=0) and the comma get nothing.
    assert adv[1] == adv[2] == adv[3] == 0.0
    # "noise cancelling" gets all of it, split by overlap: " noise" overlaps 5 chars, 11 for
    # " cancelling".
    np.testing.assert_allclose(adv[4], A * L * 5 / 16)
    np.testing.assert_allclose(adv[5], A * L * 11 / 16)
    np.testing.assert_allclose(adv[IN_REWRITE].mean(), A)
    expected_outside = A if outside == "sequence" else 0.0
    assert adv[0] == adv[6] == adv[7] == expected_outside


def test_hand_example_two_players_share_in_proportion_to_credit():
    cfg = AdvantageConfig(mode="prop", outside="zero")
    A, L = 1.5, 5
    adv = token_advantages(A, 0.8, HAND_OFFSETS, (9, 43), SEGMENTS, np.array([0.2, 0.6]), cfg)
    w = adv / (A * L)  # Â = A_g · L_g · w_t on rewrite tokens
    np.testing.assert_allclose(w.sum(), 1.0)
    # Player 0 (chars 9..25) gets share 0.25: token (9, 17) overlaps 8 chars, (17, 25) 8.
    np.testing.assert_allclose(w[1:3], [0.25 * 8 / 16, 0.25 * 8 / 16])
    np.testing.assert_allclose(w[4:6], [0.75 * 5 / 16, 0.75 * 11 / 16])
    assert w[[0, 3, 6, 7]].tolist() == [0, 0, 0, 0]


def test_hand_example_with_real_fast_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    words = ["<", ">", "</", "rewrite", "wireless", "earbuds", ",", "noise", "cancelling"]
    vocab = {w: i for i, w in enumerate(["[UNK]", *words])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    enc = hf(COMPLETION, return_offsets_mapping=True, add_special_tokens=False)
    offsets = enc["offset_mapping"]
    pieces = [COMPLETION[s:e] for s, e in offsets]
    assert "[UNK]" not in hf.convert_ids_to_tokens(enc["input_ids"])
    assert pieces[3:9] == ["wireless", "earbuds", ",", "noise", "cancelling", "</"]

    cfg = AdvantageConfig(mode="prop", outside="zero")
    adv = token_advantages(-2.0, 0.3, offsets, (9, 43), SEGMENTS, np.array([0.3, 0.0]), cfg)
    by_piece = dict(zip(pieces[3:8], adv[3:8], strict=True))
    # L = 5 rewrite tokens, player 0 (16 chars) -> "wireless" 8/16, "earbuds" 7/16 overlap.
    np.testing.assert_allclose(by_piece["wireless"], -2.0 * 5 * 8 / 15)
    np.testing.assert_allclose(by_piece["earbuds"], -2.0 * 5 * 7 / 15)
    assert by_piece[","] == by_piece["noise"] == by_piece["cancelling"] == 0.0
    assert np.all(adv[:3] == 0) and np.all(adv[8:] == 0)


# ---------------------------------------------------------------------------------------------
# GRPO advantages and span location
# ---------------------------------------------------------------------------------------------


def test_grpo_advantages():
    r = np.array([0.0, 0.5, 1.0])
    a = grpo_advantages(r, eps=1e-6)
    np.testing.assert_allclose(a, (r - 0.5) / (np.std(r) + 1e-6))
    assert grpo_advantages(np.array([0.3, 0.3, 0.3])).tolist() == [0.0, 0.0, 0.0]
    assert grpo_advantages(np.array([0.7])).tolist() == [0.0]


def test_locate_span_exact_last_and_fuzzy():
    assert locate_span("a b <rewrite>a b</rewrite>", "a b") == (13, 16)
    comp = "<rewrite>wireless   earbuds,\nnoise cancelling</rewrite>"
    span = locate_span(comp, REWRITE)
    assert span is not None
    assert comp[span[0] : span[1]] == "wireless   earbuds,\nnoise cancelling"
    segs = align_segments(comp, span, REWRITE, SEGMENTS)
    located = comp[span[0] : span[1]]
    assert [located[s:e] for s, e in segs] == ["wireless   earbuds", "noise cancelling"]
    assert locate_span(comp, "headphones") is None
    assert locate_span(comp, "   ") is None


def test_group_with_fuzzy_match_and_parse_failure():
    comps = [COMPLETION, "<rewrite>wireless earbuds,  noise cancelling</rewrite>", "oops"]
    offsets = [HAND_OFFSETS, [(0, 9), (9, 25), (25, 27), (27, 44), (44, 54)], [(0, 4)]]
    rewards = np.array([0.6, 0.9, 0.0])
    adv = group_token_advantages(
        rewards,
        comps,
        [REWRITE, REWRITE, None],
        offsets,
        [SEGMENTS, SEGMENTS, None],
        [np.array([0.0, 0.6]), np.array([0.9, 0.0]), None],
        AdvantageConfig(mode="prop", outside="zero"),
    )
    A = grpo_advantages(rewards)
    assert [len(a) for a in adv] == [8, 5, 1]
    np.testing.assert_allclose(adv[0][4:6].sum() / 5, A[0])
    # Second rollout: player 0 occupies token (9, 25) only; comma token (25, 27) gets 0.
    np.testing.assert_allclose(adv[1], [0.0, A[1] * 3, 0.0, 0.0, 0.0])
    # Parse failure with R=0 under the default "grpo" rule: plain negative A on every token.
    np.testing.assert_allclose(adv[2], [A[2]])
    padded, mask = pad_advantages(adv)
    assert padded.shape == mask.shape == (3, 8)
    assert mask.sum(axis=1).tolist() == [8, 5, 1]


# ---------------------------------------------------------------------------------------------
# Rules: zero reward, non-positive credit, clipping, rank mode, negative mode
# ---------------------------------------------------------------------------------------------


def test_zero_reward_rule_both_ways():
    phi = np.array([0.0, 0.0])
    grpo = token_advantages(-0.8, 0.0, HAND_OFFSETS, (9, 43), SEGMENTS, phi, AdvantageConfig())
    assert np.all(grpo == -0.8)  # every token, markup included
    zero = token_advantages(
        -0.8, 0.0, HAND_OFFSETS, (9, 43), SEGMENTS, phi, AdvantageConfig(zero_reward="zero")
    )
    assert np.all(zero == 0.0)


@pytest.mark.parametrize("zero_reward", ["grpo", "zero"])
def test_all_credit_non_positive_falls_back(zero_reward):
    cfg = AdvantageConfig(mode="prop", zero_reward=zero_reward, outside="zero")
    phi = np.array([-0.1, 0.0])
    adv = token_advantages(0.7, 0.4, HAND_OFFSETS, (9, 43), SEGMENTS, phi, cfg)
    # No positive credit is "no signal" (plain A); the zero-reward rule needs R <= 0 itself.
    assert np.all(adv == 0.7)


def test_negative_phi_is_clipped():
    phi = np.array([-0.5, 0.6])
    adv = token_advantages(
        1.0, 0.1, HAND_OFFSETS, (9, 43), SEGMENTS, phi, AdvantageConfig(mode="prop")
    )
    assert adv[1] == adv[2] == 0.0
    np.testing.assert_allclose(adv[4] + adv[5], 5.0)


def test_span_not_located_is_plain_grpo():
    adv = token_advantages(0.5, 0.6, HAND_OFFSETS, None, [], [], AdvantageConfig(outside="zero"))
    assert np.all(adv == 0.5)


def test_clip_at_c_std():
    cfg = AdvantageConfig(mode="prop", clip_c=2.0)
    phi = np.array([0.0, 0.6])
    adv = token_advantages(1.5, 0.6, HAND_OFFSETS, (9, 43), SEGMENTS, phi, cfg, adv_std=0.9)
    unclipped = token_advantages(
        1.5, 0.6, HAND_OFFSETS, (9, 43), SEGMENTS, phi, AdvantageConfig(mode="prop")
    )
    assert unclipped.max() > 1.8
    np.testing.assert_allclose(adv, np.clip(unclipped, -1.8, 1.8))
    neg = token_advantages(-1.5, 0.6, HAND_OFFSETS, (9, 43), SEGMENTS, phi, cfg, adv_std=0.9)
    assert neg.min() == -1.8
    with pytest.raises(ValueError):
        token_advantages(1.5, 0.6, HAND_OFFSETS, (9, 43), SEGMENTS, phi, cfg)


def _one_token_per_player(n: int):
    """n players of 1 char, separated by spaces, one token each."""
    rewrite = " ".join("abcdefghij"[:n])
    segs = [(2 * i, 2 * i + 1) for i in range(n)]
    return (0, len(rewrite)), segs, segs  # span, segments, token offsets


def test_player_shares_rank_ties_and_non_positive():
    np.testing.assert_allclose(
        player_shares(np.array([0.5, 0.1, 0.5, -1.0, 0.0]), "rank"),
        np.array([2.5, 1, 2.5, 0, 0]) / 6.0,
    )
    np.testing.assert_allclose(player_shares(np.array([3.0, 1.0]), "prop"), [0.75, 0.25])
    assert player_shares(np.array([0.0, -1.0]), "rank").tolist() == [0.0, 0.0]


@pytest.mark.parametrize("A", [1.3, -1.3])
def test_rank_mode_ordering(A):
    span, segs, offs = _one_token_per_player(4)
    phi = np.array([0.05, 0.4, 0.1, 0.2])
    adv = token_advantages(A, 0.75, offs, span, segs, phi, AdvantageConfig(mode="rank"))
    mag = np.abs(adv)
    assert mag[1] > mag[3] > mag[2] > mag[0] > 0
    np.testing.assert_allclose(adv, A * 4 * np.array([1, 4, 2, 3]) / 10)


def test_negative_mode_inverse():
    span, segs, offs = _one_token_per_player(3)
    phi = np.array([0.5, -0.1, 0.2])
    cfg = AdvantageConfig(mode="prop", negative_mode="inverse")
    neg = token_advantages(-1.0, 0.6, offs, span, segs, phi, cfg)
    # blame = max φ − φ = [0, 0.6, 0.3] -> the harmful phrase is pushed down most.
    np.testing.assert_allclose(neg, -1.0 * 3 * np.array([0, 0.6, 0.3]) / 0.9)
    # Positive advantages are unaffected by negative_mode.
    pos = token_advantages(1.0, 0.6, offs, span, segs, phi, cfg)
    np.testing.assert_allclose(pos, 3 * np.array([0.5, 0, 0.2]) / 0.7)
    same = token_advantages(-1.0, 0.6, offs, span, segs, phi, AdvantageConfig(mode="prop"))
    np.testing.assert_allclose(same, -pos)
    # All φ equal: blame shared equally.
    eq = token_advantages(-1.0, 0.6, offs, span, segs, np.full(3, 0.2), cfg)
    np.testing.assert_allclose(eq, [-1.0, -1.0, -1.0])


def test_config_validation():
    with pytest.raises(ValueError):
        AdvantageConfig(mode="softmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AdvantageConfig(clip_c=0.0)


# ---------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ---------------------------------------------------------------------------------------------


@st.composite
def rollouts(draw):
    """A completion = prefix markup + rewrite (players + separators) + suffix, random tokens."""
    n = draw(st.integers(1, 6))
    prefix = draw(st.integers(0, 12))
    pos, segs = 0, []
    for i in range(n):
        if i:
            pos += draw(st.integers(0, 3))  # separator
        length = draw(st.integers(1, 10))
        segs.append((pos, pos + length))
        pos += length
    rewrite_len = pos
    total = prefix + rewrite_len + draw(st.integers(0, 12))
    cuts = sorted(draw(st.sets(st.integers(1, total - 1), max_size=total - 1)) if total > 1 else [])
    bounds = [0, *cuts, total]
    offsets = list(zip(bounds[:-1], bounds[1:], strict=True))
    if draw(st.booleans()):
        offsets.append((0, 0))  # special token
    phi = draw(
        st.lists(
            st.floats(-1, 1, allow_nan=False, allow_subnormal=False), min_size=n, max_size=n
        ).filter(lambda p: max(p) > 1e-6)
    )
    span = (prefix, prefix + rewrite_len)
    return offsets, span, segs, np.array(phi)


configs = st.builds(
    AdvantageConfig,
    mode=st.sampled_from(["signed", "prop", "rank"]),
    outside=st.sampled_from(["sequence", "zero"]),
    zero_reward=st.sampled_from(["grpo", "zero"]),
    negative_mode=st.sampled_from(["same", "inverse"]),
)
group_rewards = st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=8)


@settings(max_examples=200, deadline=None)
@given(rollouts(), group_rewards, st.integers(0, 7), configs)
def test_mean_over_shaped_tokens_equals_sequence_advantage(rollout, rewards, g, cfg):
    offsets, span, segs, phi = rollout
    rewards = np.array(rewards)
    g = g % len(rewards)
    rewards[g] = max(rewards[g], 1e-3)  # positive reward: attribution signal present
    A = grpo_advantages(rewards)
    adv = token_advantages(
        A[g], rewards[g], offsets, span, segs, phi, cfg, reward_std=float(np.std(rewards))
    )
    in_rw = rewrite_mask(offsets, span)
    assert adv.shape == (len(offsets),)
    np.testing.assert_allclose(adv[in_rw].mean(), A[g], rtol=1e-9, atol=1e-9)
    expected_outside = A[g] if cfg.outside == "sequence" else 0.0
    np.testing.assert_allclose(adv[~in_rw], expected_outside)
    if cfg.mode != "signed":  # paper shaping: tokens carry the sign of A (no sign flips)
        assert np.all(adv * np.sign(A[g]) >= -1e-12)


@settings(max_examples=100, deadline=None)
@given(rollouts(), st.floats(0.1, 3.0), st.floats(-3, 3, allow_nan=False), st.floats(0.1, 2))
def test_clip_bounds(rollout, c, A, adv_std):
    offsets, span, segs, phi = rollout
    cfg = AdvantageConfig(clip_c=c)
    adv = token_advantages(A, 0.5, offsets, span, segs, phi, cfg, adv_std=adv_std)
    assert np.all(np.abs(adv) <= c * adv_std + 1e-12)


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------


def _batch(seed=0, B=3, T=5):
    gen = torch.Generator().manual_seed(seed)
    logp_old = -torch.rand(B, T, generator=gen) * 3
    logp_new = logp_old + 0.4 * torch.randn(B, T, generator=gen)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 3:] = False
    mask[-1, 1:] = False
    return logp_new, logp_old, mask


def test_loss_equals_grpo_when_advantage_constant_per_sequence():
    logp_new, logp_old, mask = _batch()
    A = torch.tensor([0.9, -0.4, 1.2])
    adv = A[:, None].expand_as(logp_new)
    loss, _ = clipped_surrogate_loss(logp_new, logp_old, adv, mask)
    # Plain GRPO (token-level / DAPO normalisation), written out directly.
    ratio = torch.exp(logp_new - logp_old)
    surr = torch.minimum(ratio * A[:, None], torch.clamp(ratio, 0.8, 1.2) * A[:, None])
    expected = -(surr[mask]).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)


def test_loss_through_shaping_with_uniform_credit_is_grpo():
    # Equal-length players with equal φ and one token each -> Â = A on every token.
    span, segs, offs = _one_token_per_player(4)
    offs = [(0, 0), *offs]  # a markup token before the rewrite, span shifted by 0 is fine
    adv = token_advantages(0.8, 0.5, offs, span, segs, np.full(4, 0.1), AdvantageConfig())
    np.testing.assert_allclose(adv, 0.8)
    logp_new, logp_old, _ = _batch(B=1, T=len(offs))
    mask = torch.ones(1, len(offs))
    shaped, _ = clipped_surrogate_loss(logp_new, logp_old, torch.tensor(adv)[None], mask)
    plain, _ = clipped_surrogate_loss(logp_new, logp_old, torch.full((1, len(offs)), 0.8), mask)
    torch.testing.assert_close(shaped, plain)


def test_gradient_sign():
    logp_old = torch.full((2, 3), -1.0)
    logp_new = logp_old.clone().requires_grad_(True)
    adv = torch.tensor([[1.0, 0.0, 2.0], [-1.0, -0.5, 0.0]])
    loss, _ = clipped_surrogate_loss(logp_new, logp_old, adv, torch.ones(2, 3))
    loss.backward()
    grad = logp_new.grad
    # Descending the loss raises log-probs of positive-advantage tokens, lowers negative ones.
    assert torch.all(grad[adv > 0] < 0)
    assert torch.all(grad[adv < 0] > 0)
    assert torch.all(grad[adv == 0] == 0)


def test_clip_fraction_and_kl():
    logp_new, logp_old, mask = _batch()
    adv = torch.randn(logp_new.shape, generator=torch.Generator().manual_seed(1))
    _, stats = clipped_surrogate_loss(logp_old, logp_old, adv, mask, logp_ref=logp_old, beta=0.1)
    assert stats["clip_frac"] == 0.0
    assert stats["kl"] == 0.0
    assert stats["ratio_mean"] == pytest.approx(1.0)
    assert stats["n_tokens"] == float(mask.sum())
    _, stats = clipped_surrogate_loss(logp_new, logp_old, adv, mask, logp_ref=logp_old)
    assert 0.0 < stats["clip_frac"] < 1.0
    assert stats["kl"] > 0.0


def test_kl_term_value():
    logp_new = torch.tensor([[-1.0, -2.0]])
    logp_ref = torch.tensor([[-1.5, -2.0]])
    adv = torch.zeros(1, 2)
    loss, stats = clipped_surrogate_loss(
        logp_new, logp_new, adv, torch.ones(1, 2), logp_ref=logp_ref, beta=0.5
    )
    k3 = np.exp(-0.5) + 0.5 - 1.0
    assert stats["kl"] == pytest.approx(k3 / 2)
    assert float(loss) == pytest.approx(0.5 * k3 / 2)


def test_dapo_vs_seq_normalisation_hand_computed():
    # ratio = 1 everywhere, so per-token loss = -Â.
    logp = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    dapo, _ = clipped_surrogate_loss(logp, logp, adv, mask, norm="dapo")
    seq, _ = clipped_surrogate_loss(logp, logp, adv, mask, norm="seq")
    assert float(dapo) == pytest.approx(-(1 + 2 + 3 + 4) / 4)  # -2.5
    assert float(seq) == pytest.approx(-((1 + 2 + 3) / 3 + 4 / 1) / 2)  # -3.0
    # A sequence with no active token does not count in "seq".
    mask3 = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    seq3, _ = clipped_surrogate_loss(
        torch.zeros(3, 3), torch.zeros(3, 3), torch.cat([adv, torch.ones(1, 3)]), mask3, norm="seq"
    )
    assert float(seq3) == pytest.approx(-3.0)


def test_clipping_hand_computed():
    logp_old = torch.zeros(1, 4)
    logp_new = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, stats = clipped_surrogate_loss(logp_new, logp_old, adv, torch.ones(1, 4))
    # min(r·A, clip(r)·A): 1.2, -1.5, 0.5, -0.8
    assert float(loss) == pytest.approx(-(1.2 - 1.5 + 0.5 - 0.8) / 4)
    assert stats["clip_frac"] == pytest.approx(0.5)


def test_masked_padding_garbage_does_not_leak():
    logp_new = torch.tensor([[-1.0, float("-inf")]], requires_grad=True)
    logp_old = torch.tensor([[-1.0, 50.0]])
    adv = torch.tensor([[1.0, 1.0]])
    mask = torch.tensor([[True, False]])
    loss, stats = clipped_surrogate_loss(logp_new, logp_old, adv, mask, logp_ref=logp_old)
    loss.backward()
    assert torch.isfinite(loss) and torch.all(torch.isfinite(logp_new.grad))
    assert float(loss.detach()) == pytest.approx(-1.0)
    assert np.isfinite(stats["kl"])


# ---------------------------------------------------------------------------------------------
# "signed" mode: credit centred on the raw query, negative credit pushes down
# ---------------------------------------------------------------------------------------------


def test_signed_hand_example():
    # Three one-token players; φ sums to R − R(q) = 0.1; group reward std 0.2.
    span, segs, offs = _one_token_per_player(3)
    phi = np.array([0.3, -0.2, 0.0])
    adv = token_advantages(0.5, 0.6, offs, span, segs, phi, AdvantageConfig(), reward_std=0.2)
    # Â_t = A + (L ψ_t − Σψ) / σ with L = 3, Σψ = 0.1, σ = 0.2.
    np.testing.assert_allclose(adv, 0.5 + (3 * phi - 0.1) / 0.2, atol=1e-12)
    assert adv[1] < 0 < adv[0]  # the harmful phrase is pushed down although A > 0
    np.testing.assert_allclose(adv.mean(), 0.5)


def test_signed_harmful_phrase_below_adding_nothing():
    """With exact efficiency Â_t = (L ψ_t + R(q) − mean R) / σ: a phrase with φ < 0 gets less
    than an empty answer ("NONE", searched as the raw query) in the same group."""
    span, segs, offs = _one_token_per_player(2)
    raw = 0.5
    phi = np.array([0.3, -0.1])  # R = raw + 0.2
    rewards = np.array([raw + phi.sum(), raw, 0.4, 0.6])  # rollout 1 answered NONE
    A = grpo_advantages(rewards)
    sigma = float(np.std(rewards))
    adv = token_advantages(A[0], rewards[0], offs, span, segs, phi, AdvantageConfig(), None, sigma)
    none_adv = A[1]  # an empty answer has no players: plain A on every token
    assert adv[1] < none_adv < adv[0]
    np.testing.assert_allclose(adv, (2 * phi + raw - rewards.mean()) / sigma, atol=1e-4)


def test_signed_symmetric_and_null_players():
    span, segs, offs = _one_token_per_player(3)
    adv = token_advantages(
        1.0, 0.5, offs, span, segs, np.array([0.2, 0.2, 0.0]), AdvantageConfig(), reward_std=0.1
    )
    assert adv[0] == adv[1] > adv[2]  # symmetric players equal; the null player gets less
    # All φ zero: no attribution signal, plain A.
    flat = token_advantages(
        1.0, 0.5, offs, span, segs, np.zeros(3), AdvantageConfig(), reward_std=0.1
    )
    np.testing.assert_allclose(flat, 1.0)


def test_signed_zero_reward_rule_tests_absolute_reward():
    span, segs, offs = _one_token_per_player(2)
    phi = np.array([-0.3, 0.0])  # all credit negative, but R > 0: the phrase is pushed down
    adv = token_advantages(0.2, 0.1, offs, span, segs, phi, AdvantageConfig(zero_reward="zero"))
    assert adv[0] < adv[1]
    # R = 0 (absolute): the zero-reward rule applies whatever the credit
    zero = token_advantages(-0.4, 0.0, offs, span, segs, phi, AdvantageConfig(zero_reward="zero"))
    assert np.all(zero == 0.0)
    grpo = token_advantages(-0.4, 0.0, offs, span, segs, phi, AdvantageConfig())
    assert np.all(grpo == -0.4)


def test_signed_sigma_floor():
    span, segs, offs = _one_token_per_player(2)
    phi = np.array([0.01, -0.01])
    adv = token_advantages(0.0, 0.5, offs, span, segs, phi, AdvantageConfig(min_std=0.05))
    np.testing.assert_allclose(adv, [0.4, -0.4])  # (2·0.01 − 0) / 0.05
