import itertools
import math

import pytest
import torch

from trl_pro import pro_loss
from trl_pro.objectives.pro import pro_loss_terms


def reference_pro_loss(scores, rewards=None, lengths=None):
    """Eq. 8-11 written out with Python floats, one prompt and one term at a time."""
    losses = []
    for b, row in enumerate(scores.tolist()):
        n = len(row) if lengths is None else lengths[b]
        total = 0.0
        for k in range(n - 1):
            if rewards is None:
                inv_t = [1.0] * n
            else:
                s = rewards[b].tolist()
                inv_t = [0.0] * n
                for i in range(k + 1, n):
                    inv_t[i] = s[k] - s[i]
                inv_t[k] = max(s[k] - s[i] for i in range(k + 1, n))
            numerator = row[k] * inv_t[k]
            logits = [row[i] * inv_t[i] for i in range(k, n)]
            top = max(logits)
            total += top + math.log(sum(math.exp(x - top) for x in logits)) - numerator
        losses.append(total)
    return torch.tensor(losses, dtype=torch.float64)


def test_two_candidates_is_bradley_terry():
    scores = torch.tensor([[-1.0, -2.0], [-3.0, -0.5], [0.0, 0.0]])
    expected = -torch.nn.functional.logsigmoid(scores[:, 0] - scores[:, 1])
    torch.testing.assert_close(pro_loss(scores), expected)


def test_hand_checked_three_candidates():
    # k=1: -log(e^-1 / (e^-1 + e^-2 + e^-3)); k=2: -log(e^-2 / (e^-2 + e^-3))
    scores = torch.tensor([[-1.0, -2.0, -3.0]])
    first = -math.log(math.exp(-1) / (math.exp(-1) + math.exp(-2) + math.exp(-3)))
    second = -math.log(math.exp(-2) / (math.exp(-2) + math.exp(-3)))
    torch.testing.assert_close(pro_loss_terms(scores), torch.tensor([[first, second]]))


def test_hand_checked_temperature():
    # rewards 3, 1, 0: k=1 inverse temperatures (own = max(2, 3) = 3, 2, 3); k=2: (own 1, 1)
    scores = torch.tensor([[-1.0, -2.0, -4.0]])
    rewards = torch.tensor([[3.0, 1.0, 0.0]])
    logits_1 = [-1.0 * 3, -2.0 * 2, -4.0 * 3]
    first = math.log(sum(math.exp(x) for x in logits_1)) - logits_1[0]
    logits_2 = [-2.0 * 1, -4.0 * 1]
    second = math.log(sum(math.exp(x) for x in logits_2)) - logits_2[0]
    torch.testing.assert_close(pro_loss(scores, rewards), torch.tensor([first + second]))


@pytest.mark.parametrize("n,with_rewards", itertools.product([2, 3, 5, 8], [False, True]))
def test_matches_reference(n, with_rewards):
    generator = torch.Generator().manual_seed(n)
    scores = torch.randn(6, n, generator=generator, dtype=torch.float64) * 3
    rewards = None
    if with_rewards:
        rewards = torch.randn(6, n, generator=generator, dtype=torch.float64).sort(dim=1, descending=True).values
    torch.testing.assert_close(pro_loss(scores, rewards).double(), reference_pro_loss(scores, rewards))


@pytest.mark.parametrize("with_rewards", [False, True])
def test_ragged_mask_equals_rows_alone(with_rewards):
    generator = torch.Generator().manual_seed(0)
    lengths = [2, 5, 3, 4]
    scores = torch.randn(4, 5, generator=generator)
    rewards = torch.randn(4, 5, generator=generator).sort(dim=1, descending=True).values if with_rewards else None
    mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]
    # Garbage in padding must not leak, not even NaN
    scores = scores.masked_fill(~mask, float("nan"))
    if rewards is not None:
        rewards = rewards.masked_fill(~mask, float("inf"))
    batched = pro_loss(scores, rewards, mask)
    for b, n in enumerate(lengths):
        alone = pro_loss(scores[b : b + 1, :n], None if rewards is None else rewards[b : b + 1, :n])
        torch.testing.assert_close(batched[b : b + 1], alone)
    assert torch.isfinite(batched).all()


def test_gradients_finite_with_padding():
    scores = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, -3.0, -2.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    pro_loss(scores, torch.tensor([[2.0, 1.0, 0.0], [3.0, 1.0, 1.0]]), mask).sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert scores.grad[0, 2] == 0  # padding gets no gradient


def test_gradcheck_float64():
    scores = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    rewards = torch.tensor([[4.0, 2.0, 1.0, 0.5], [1.0, 1.0, 0.0, -1.0], [3.0, 2.0, 1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True] * 4, [True] * 4, [True, True, True, False]])
    assert torch.autograd.gradcheck(lambda s: pro_loss(s, None, mask).double(), (scores,))
    assert torch.autograd.gradcheck(lambda s: pro_loss(s, rewards, mask).double(), (scores,))


def test_extreme_values_stay_finite():
    scores = torch.tensor([[-1e4, -2.0, -3.0], [-1.0, -1e4, -1e4]], requires_grad=True)
    rewards = torch.tensor([[1e3, 0.0, -1.0], [0.0, -1e3, -2e3]])
    for r in (None, rewards):
        loss = pro_loss(scores, r)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(scores.grad).all()
        scores.grad = None
    # Candidate 1 scored far below the others with reward gaps of 1e3: a huge but exact loss, no overflow.
    # Term 1: 1/T = (1001, 1000, 1001), logsumexp ~ -2 * 1000; term 2: 1/T = 1, log(1 + e^-1)
    expected = 1e4 * 1001 - 2.0 * 1000 + math.log(1 + math.exp(-1))
    assert pro_loss(scores, rewards)[0].item() == pytest.approx(expected, rel=1e-6)


def test_ties_are_constant_and_documented():
    scores = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    all_tied = torch.tensor([[1.0, 1.0, 1.0]])
    loss = pro_loss(scores, all_tied)
    # Every 1/T is 0: term k is log(n - k + 1) whatever the scores, with no gradient
    assert loss.item() == pytest.approx(math.log(3) + math.log(2))
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))
    # A partial tie: candidate 2 ties candidate 1, so it adds exp(0) = 1 to term 1's denominator, no gradient to it
    partial = torch.tensor([[2.0, 2.0, 0.0]])
    scores.grad = None
    terms = pro_loss_terms(scores, partial)
    expected_first = math.log(math.exp(-1.0 * 2) + 1 + math.exp(-3.0 * 2)) + 2.0
    assert terms[0, 0].item() == pytest.approx(expected_first)
    assert terms[0, 1].item() == pytest.approx(math.log(math.exp(-2.0 * 2) + math.exp(-3.0 * 2)) + 4.0)
    terms[:, 0].sum().backward()
    assert scores.grad[0, 1] == 0


def test_low_precision_inputs_accumulate_in_fp32():
    scores = torch.randn(4, 3, dtype=torch.float64)
    for dtype in (torch.bfloat16, torch.float16):
        loss = pro_loss(scores.to(dtype))
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss.double(), reference_pro_loss(scores.to(dtype).double()), rtol=1e-5, atol=1e-5)
