"""`rrhf_loss` (the RRHF rank term) and `RRHFObjective` (rank + SFT in the loss core) against direct definitions."""

import itertools

import pytest
import torch

from trl_pro import rrhf_loss
from trl_pro.data.layout import RankingLayout
from trl_pro.objectives.base import RankingObjective
from trl_pro.objectives.rrhf import RRHFObjective, rrhf_loss_terms


def loop_rrhf_loss(scores, rewards=None, lengths=None):
    """One prompt at a time, one pair at a time, in float64: sum of max(0, p_i - p_j) over j preferred to i."""
    out = []
    for b in range(scores.shape[0]):
        n = scores.shape[1] if lengths is None else lengths[b]
        total = 0.0
        for j, i in itertools.permutations(range(n), 2):
            preferred = j < i if rewards is None else float(rewards[b, j]) > float(rewards[b, i])
            if preferred:
                total += max(0.0, float(scores[b, i]) - float(scores[b, j]))
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def test_hand_checked_order():
    # Pairs (0>1): max(0, -2 + 1) = 0; (0>2): max(0, -0.5 + 1) = 0.5; (1>2): max(0, -0.5 + 2) = 1.5
    scores = torch.tensor([[-1.0, -2.0, -0.5]])
    torch.testing.assert_close(rrhf_loss(scores), torch.tensor([2.0]))
    torch.testing.assert_close(rrhf_loss_terms(scores), torch.tensor([[0.5, 1.5, 0.0]]))
    # Correctly ordered scores cost nothing
    assert rrhf_loss(torch.tensor([[-0.1, -0.2, -3.0]])).item() == 0.0


def test_hand_checked_ties_form_no_pair():
    scores = torch.tensor([[-2.0, -1.0, -0.5]])
    # By order: (0>1) 1 + (0>2) 1.5 + (1>2) 0.5 = 3; with candidates 0 and 1 tied in reward, the first pair goes
    torch.testing.assert_close(rrhf_loss(scores), torch.tensor([3.0]))
    torch.testing.assert_close(rrhf_loss(scores, torch.tensor([[1.0, 1.0, 0.0]])), torch.tensor([2.0]))
    # A fully tied ranking has no pair at all
    assert rrhf_loss(scores, torch.tensor([[0.3, 0.3, 0.3]])).item() == 0.0


def test_rewards_set_the_preference_in_any_order():
    g = torch.Generator().manual_seed(0)
    scores, rewards = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    perm = torch.randperm(5, generator=g)
    torch.testing.assert_close(rrhf_loss(scores, rewards), rrhf_loss(scores[:, perm], rewards[:, perm]))
    # The rewards, not the order, decide: sorting by reward and dropping them gives the same loss
    order = rewards.argsort(dim=1, descending=True)
    torch.testing.assert_close(rrhf_loss(scores, rewards), rrhf_loss(scores.gather(1, order)))


@pytest.mark.parametrize("n", [2, 3, 6])
@pytest.mark.parametrize("with_rewards", [False, True])
def test_matches_pair_loop(n, with_rewards):
    g = torch.Generator().manual_seed(n)
    scores = torch.randn(7, n, generator=g) * 2
    rewards = torch.randint(0, 3, (7, n), generator=g).float() if with_rewards else None  # many ties
    expected = loop_rrhf_loss(scores, rewards)
    torch.testing.assert_close(rrhf_loss(scores, rewards).double(), expected)


@pytest.mark.parametrize("with_rewards", [False, True])
def test_ragged_mask_equals_rows_alone(with_rewards):
    g = torch.Generator().manual_seed(1)
    lengths = [2, 5, 3, 4]
    scores = torch.randn(4, 5, generator=g)
    rewards = torch.randn(4, 5, generator=g) if with_rewards else None
    mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]
    # Padding holds junk that must not leak into the loss or the gradient
    scores = scores.masked_fill(~mask, float("nan")).requires_grad_()
    if rewards is not None:
        rewards = rewards.masked_fill(~mask, float("inf"))
    loss = rrhf_loss(scores, rewards, mask)
    expected = loop_rrhf_loss(scores.detach(), rewards, lengths)
    torch.testing.assert_close(loss.double(), expected)
    loss.sum().backward()
    assert torch.isfinite(scores.grad).all() and (scores.grad[~mask] == 0).all()


def test_gradient_is_one_per_violated_pair():
    scores = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    rrhf_loss(scores).sum().backward()
    # Violated pairs (0>2) and (1>2): p_0 and p_1 pushed up by 1 each, p_2 down by 2
    torch.testing.assert_close(scores.grad, torch.tensor([[-1.0, -1.0, 2.0]]))


def test_low_precision_accumulates_in_fp32():
    scores = torch.randn(3, 4)
    for dtype in (torch.bfloat16, torch.float16):
        loss = rrhf_loss(scores.to(dtype))
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss.double(), loop_rrhf_loss(scores.to(dtype).double()))


def _layout(lengths, token_counts):
    return RankingLayout(
        torch.tensor([0] + token_counts).cumsum(0),
        torch.tensor([0] + lengths).cumsum(0),
        torch.tensor([0] + lengths[:-1]).cumsum(0),  # the best candidate of each prompt
    )


def test_objective_is_rrhf_weight_rank_plus_mean_sft():
    """The core's RRHF objective: p = sum / len ** length_penalty (lengths without padding), pairs within a prompt,
    loss = mean over prompts of rrhf_weight * rank + NLL of the best candidate averaged over its tokens."""
    lengths, token_counts = [3, 2], [2, 5, 1, 4, 3]
    layout = _layout(lengths, token_counts)
    sums = torch.tensor([-3.0, -4.0, -2.5, -6.0, -2.0], dtype=torch.float64, requires_grad=True)
    rewards = torch.tensor([2.0, 1.0, 0.0, 1.0, -1.0])
    objective = RRHFObjective(rrhf_weight=0.5, length_penalty=0.7)
    scores, terms, prompt_loss, sft_nll = objective.ranking_level(sums, layout, rewards, sft_weight=1.0)

    counts = torch.tensor(token_counts, dtype=torch.float64)
    p = sums.detach() / counts**0.7
    torch.testing.assert_close(scores.detach(), p)
    rank = [
        max(0, p[1] - p[0]) + max(0, p[2] - p[0]) + max(0, p[2] - p[1]),  # prompt 0, candidates 0..2
        max(0, p[4] - p[3]),  # prompt 1: no pair with prompt 0's candidates
    ]
    nll = torch.stack([-sums[0] / 2, -sums[3] / 4]).detach()
    torch.testing.assert_close(sft_nll.detach(), nll)
    torch.testing.assert_close(prompt_loss.detach(), 0.5 * torch.stack([torch.as_tensor(r) for r in rank]) + nll)
    assert terms.shape == (2, 2) and terms[1, 1] == 0  # padding term of the 2-candidate prompt
    assert torch.autograd.gradcheck(
        lambda s: objective.ranking_level(s, layout, rewards, sft_weight=1.0)[2].mean(), (sums,)
    )


def test_objective_arguments():
    assert isinstance(RRHFObjective(), RankingObjective)
    assert RRHFObjective().sft_loss_reduction == "mean" and RRHFObjective().rrhf_weight == 1.0
    with pytest.raises(ValueError, match="rrhf_weight"):
        RRHFObjective(rrhf_weight=-1.0)
    with pytest.raises(ValueError, match="length_penalty"):
        RRHFObjective(length_penalty=-0.5)
