"""`plackett_luce_loss`, `lipo_lambda_loss`, `all_pairs_loss` and `ListDPOObjective` against plain-Python fp64 loops
written from the formulas of issue #21, and through the loss core with a reference (`ref_logps`)."""

import itertools
import math

import pytest
import torch

from trl_pro import lipo_lambda_loss, plackett_luce_loss
from trl_pro.data.layout import RankingLayout
from trl_pro.loss_core.dispatch import ranking_loss_from_hidden
from trl_pro.loss_core.reference import eager_ranking_loss_from_hidden
from trl_pro.objectives.list_dpo import ListDPOObjective, all_pairs_loss
from trl_pro.objectives.pro import PROObjective


def softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def loop_plackett_luce(logratios, lengths, beta):
    out = []
    for b, n in enumerate(lengths):
        s = [beta * float(logratios[b, i]) for i in range(n)]
        total = 0.0
        for k in range(n - 1):
            total -= s[k] - math.log(sum(math.exp(s[i]) for i in range(k, n)))
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def loop_lipo_lambda(logratios, lengths, beta, rewards=None):
    out = []
    for b, n in enumerate(lengths):
        s = [beta * float(logratios[b, i]) for i in range(n)]
        psi = [n - (i + 1) for i in range(n)] if rewards is None else [float(rewards[b, i]) for i in range(n)]
        # τ: 1-based rank by s descending; equal s keep their listed order
        order = sorted(range(n), key=lambda i: (-s[i], i))
        tau = {i: r + 1 for r, i in enumerate(order)}
        total = 0.0
        for i, j in itertools.permutations(range(n), 2):
            if psi[i] > psi[j]:
                gain = abs((2 ** psi[i] - 1) - (2 ** psi[j] - 1))
                discount = abs(1 / math.log2(1 + tau[i]) - 1 / math.log2(1 + tau[j]))
                total += gain * discount * softplus(-(s[i] - s[j]))
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def loop_all_pairs(logratios, lengths, beta, rewards=None):
    out = []
    for b, n in enumerate(lengths):
        s = [beta * float(logratios[b, i]) for i in range(n)]
        pairs = [
            (i, j)
            for i, j in itertools.permutations(range(n), 2)
            if (i < j if rewards is None else float(rewards[b, i]) > float(rewards[b, j]))
        ]
        out.append(sum(softplus(-(s[i] - s[j])) for i, j in pairs) / max(len(pairs), 1))
    return torch.tensor(out, dtype=torch.float64)


LENGTHS = [4, 2, 3, 5]


def _case(seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    n = max(LENGTHS)
    mask = torch.arange(n)[None, :] < torch.tensor(LENGTHS)[:, None]
    logratios = (torch.randn(len(LENGTHS), n, generator=g, dtype=torch.float64) * 5).masked_fill(~mask, 1e4)
    rewards = torch.sort(torch.rand(len(LENGTHS), n, generator=g, dtype=torch.float64) * 3, descending=True).values
    if ties:
        rewards = rewards.round()  # many ties, some rankings fully tied
        rewards[0] = 1.0
    return logratios, rewards, mask


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.5])
def test_plackett_luce_matches_loop(beta):
    logratios, _, mask = _case()
    torch.testing.assert_close(
        plackett_luce_loss(logratios, mask, beta=beta), loop_plackett_luce(logratios, LENGTHS, beta)
    )


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.5])
@pytest.mark.parametrize("scores", ["none", "distinct", "ties"])
def test_lipo_lambda_matches_loop(beta, scores):
    logratios, rewards, mask = _case(seed=1, ties=scores == "ties")
    rewards = None if scores == "none" else rewards
    torch.testing.assert_close(
        lipo_lambda_loss(logratios, rewards, mask, beta=beta), loop_lipo_lambda(logratios, LENGTHS, beta, rewards)
    )


@pytest.mark.parametrize("scores", ["none", "distinct", "ties"])
def test_all_pairs_matches_loop(scores):
    logratios, rewards, mask = _case(seed=2, ties=scores == "ties")
    rewards = None if scores == "none" else rewards
    torch.testing.assert_close(
        all_pairs_loss(logratios, rewards, mask, beta=0.5), loop_all_pairs(logratios, LENGTHS, 0.5, rewards)
    )


def test_lipo_lambda_ties_in_s_keep_listed_order():
    # Every s equal (the policy is the reference): τ is the listed order, so Δ is not zero and the loss learns
    logratios = torch.zeros(1, 3, dtype=torch.float64)
    expected = loop_lipo_lambda(logratios, [3], 0.1)
    torch.testing.assert_close(lipo_lambda_loss(logratios), expected)
    assert expected.item() > 0


def test_tied_labels_form_no_pair():
    logratios = torch.tensor([[0.3, -1.0, 2.0]], dtype=torch.float64)
    tied = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64)
    assert lipo_lambda_loss(logratios, tied).item() == 0.0
    assert all_pairs_loss(logratios, tied).item() == 0.0


def test_two_candidates_are_dpo_sigmoid():
    logratios = torch.tensor([[1.5, -0.5], [-2.0, 0.25]], dtype=torch.float64)
    dpo = -torch.nn.functional.logsigmoid(0.1 * (logratios[:, 0] - logratios[:, 1]))
    torch.testing.assert_close(plackett_luce_loss(logratios), dpo)
    torch.testing.assert_close(all_pairs_loss(logratios), dpo)


def test_gradients_are_finite_and_padding_gets_none():
    logratios, rewards, mask = _case(seed=3)
    for loss in (
        lambda x: plackett_luce_loss(x, mask),
        lambda x: lipo_lambda_loss(x, rewards, mask),
        lambda x: all_pairs_loss(x, rewards, mask),
    ):
        x = logratios.clone().requires_grad_()
        loss(x).sum().backward()
        assert torch.isfinite(x.grad).all()
        assert (x.grad[~mask] == 0).all()
    # bf16 inputs accumulate in fp32
    assert plackett_luce_loss(logratios.bfloat16(), mask).dtype == torch.float32


@pytest.mark.parametrize("loss_type", ["plackett_luce", "lipo_lambda", "all_pairs"])
@pytest.mark.parametrize("implementation", ["torch", "trl"])
def test_objective_in_the_loss_core_scores_the_log_ratio(loss_type, implementation):
    """Through the loss core, s_i = beta * (sum of token log-probs - ref_logps); the loss is the public function's
    plus the SFT term (mean NLL of the SFT candidate), and gradients match the eager [T, V] reference."""
    g = torch.Generator().manual_seed(5)
    lengths, counts = [3, 2, 4], [2, 5, 1, 3, 3, 1, 2, 6, 1]
    layout = RankingLayout(
        torch.tensor([0] + counts).cumsum(0), torch.tensor([0] + lengths).cumsum(0), torch.tensor([0, 3, 5])
    )
    hidden = torch.randn(sum(counts), 16, generator=g, requires_grad=True)
    weight = torch.randn(40, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 40, (sum(counts),), generator=g)
    ref_logps = -torch.rand(len(counts), generator=g) * 20
    rewards = torch.tensor([3.0, 2.0, 0.5, 1.0, 0.0, 4.0, 4.0, 2.0, 1.0])  # sorted within each ranking, one tie
    objective = ListDPOObjective(loss_type=loss_type, beta=0.5)
    kwargs = dict(objective=objective, sft_weight=0.3, ref_logps=ref_logps)
    out = ranking_loss_from_hidden(
        hidden, weight, None, targets, layout, rewards, implementation=implementation, **kwargs
    )
    out.loss.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    eager = eager_ranking_loss_from_hidden(hidden, weight, None, targets, layout, rewards, **kwargs)
    eager.loss.backward()
    torch.testing.assert_close(out.loss, eager.loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0], hidden.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], weight.grad, rtol=1e-4, atol=1e-5)

    padded_ratio, mask = layout.to_padded(out.logprob_sums - ref_logps)
    padded_rewards = layout.to_padded(rewards)[0]
    public = {
        "plackett_luce": lambda: plackett_luce_loss(padded_ratio, mask, beta=0.5),
        "lipo_lambda": lambda: lipo_lambda_loss(padded_ratio, padded_rewards, mask, beta=0.5),
        "all_pairs": lambda: all_pairs_loss(padded_ratio, padded_rewards, mask, beta=0.5),
    }[loss_type]()
    counts_t = layout.token_counts().float()
    sft_nll = -(out.logprob_sums / counts_t)[layout.sft_candidate]
    torch.testing.assert_close(out.loss, (public + 0.3 * sft_nll).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.scores, 0.5 * (out.logprob_sums - ref_logps))


def test_reference_arguments_are_checked():
    layout = RankingLayout(torch.tensor([0, 2, 3]), torch.tensor([0, 2]), torch.tensor([0]))
    hidden, weight, targets = torch.randn(3, 8), torch.randn(11, 8), torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="needs the reference"):
        ranking_loss_from_hidden(hidden, weight, None, targets, layout, objective=ListDPOObjective())
    with pytest.raises(ValueError, match="takes no reference"):
        ranking_loss_from_hidden(
            hidden, weight, None, targets, layout, objective=PROObjective(), ref_logps=torch.zeros(2)
        )
    with pytest.raises(ValueError, match=r"ref_logps must be \[C\] = \[2\]"):
        ranking_loss_from_hidden(
            hidden, weight, None, targets, layout, objective=ListDPOObjective(), ref_logps=torch.zeros(3)
        )
    with pytest.raises(ValueError, match="loss_type"):
        ListDPOObjective(loss_type="listnet")
