"""mmib/crf_mmib.py: the CRF's NLL, Viterbi path, marginals and span probabilities against brute-force enumeration of
every label sequence, padding and masks, the scaled recursion and its log-space fallback."""

import itertools

import pytest
import torch

from crf_enumeration import path_probabilities, random_crf
from mmib.crf_mmib import MMIBCRF


def test_marginals_and_span_probabilities_match_brute_force_with_padding():
    crf = random_crf(3, seed=0)
    lengths = [4, 2, 1]
    emissions = torch.randn(len(lengths), 4, 3, dtype=torch.float64)
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        marginals = crf.marginals(emissions, mask)
        tags = crf.decode(emissions, mask)
        spans = [
            (post, start, end)
            for post, length in enumerate(lengths)
            for start in range(length)
            for end in range(start + 1, length + 1)
        ]
        span_scores = crf.span_probability(emissions, mask, tags, torch.tensor(spans))
    for post, length in enumerate(lengths):
        probabilities = path_probabilities(crf, emissions[post], length)
        for t in range(length):
            for label in range(3):
                expected = sum(p for path, p in probabilities.items() if path[t] == label)
                assert abs(float(marginals[post, t, label]) - expected) < 1e-9
        assert torch.all(marginals[post, length:] == 0)
        assert abs(float(marginals[post, :length].sum()) - length) < 1e-9
    viterbi = tags.tolist()
    for (post, start, end), score in zip(spans, span_scores.tolist()):
        wanted = tuple(viterbi[post][start:end])
        expected = sum(
            p
            for path, p in path_probabilities(crf, emissions[post], lengths[post]).items()
            if path[start:end] == wanted
        )
        assert abs(score - expected) < 1e-9, (post, start, end)


def test_span_probability_of_the_whole_post_is_the_path_probability():
    crf = random_crf(4, seed=1)
    emissions = torch.randn(1, 3, 4, dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    tags = torch.tensor([[2, 0, 3]])
    with torch.no_grad():
        score = crf.span_probability(emissions, mask, tags, torch.tensor([[0, 0, 3]]))
        expected = torch.exp(-crf.negative_log_likelihood(emissions, tags, mask))
    assert torch.allclose(score, expected)
    assert crf.span_probability(emissions, mask, tags, torch.zeros(0, 3, dtype=torch.long)).shape == (0,)


def brute_force(crf: MMIBCRF, emissions: torch.Tensor, length: int) -> tuple[torch.Tensor, list[int], dict]:
    num_labels = emissions.shape[-1]
    scores = {}
    for path in itertools.product(range(num_labels), repeat=length):
        score = crf.start_transitions[path[0]] + crf.end_transitions[path[-1]]
        score = score + sum(emissions[i, tag] for i, tag in enumerate(path))
        score = score + sum(crf.transitions[a, b] for a, b in zip(path[:-1], path[1:]))
        scores[path] = score
    log_partition = torch.logsumexp(torch.stack(list(scores.values())), dim=0)
    best = max(scores, key=lambda path: scores[path].item())
    return log_partition, list(best), scores


def test_crf_matches_brute_force_with_padding():
    torch.manual_seed(3)
    crf = MMIBCRF(3)
    for parameter in crf.parameters():
        parameter.data.normal_()
    emissions = torch.randn(3, 4, 3)
    lengths = torch.tensor([4, 2, 1])
    mask = torch.arange(4)[None, :] < lengths[:, None]
    tags = torch.randint(0, 3, (3, 4))
    with torch.no_grad():
        nll = crf.negative_log_likelihood(emissions, tags, mask)
        decoded = crf.decode(emissions, mask)
    for row, length in enumerate(lengths.tolist()):
        log_partition, best, scores = brute_force(crf, emissions[row, :length], length)
        gold = tuple(tags[row, :length].tolist())
        assert nll[row].item() == pytest.approx((log_partition - scores[gold]).item(), abs=1e-5)
        assert decoded[row, :length].tolist() == best
        assert (decoded[row, length:] == -100).all()


def test_crf_padding_values_do_not_matter():
    torch.manual_seed(4)
    crf = MMIBCRF(4)
    emissions = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    tags = torch.randint(0, 4, (2, 5))
    changed_emissions, changed_tags = emissions.clone(), tags.clone()
    changed_emissions[0, 3:] = 100.0
    changed_tags[0, 3:] = 3
    with torch.no_grad():
        assert torch.allclose(
            crf.negative_log_likelihood(emissions, tags, mask),
            crf.negative_log_likelihood(changed_emissions, changed_tags, mask),
        )
        assert torch.equal(crf.decode(emissions, mask), crf.decode(changed_emissions, mask))


def test_crf_rejects_bad_masks():
    crf = MMIBCRF(2)
    with pytest.raises(ValueError, match="prefix"):
        crf.decode(torch.zeros(1, 3, 2), torch.tensor([[True, False, True]]))


def test_crf_row_without_words_has_no_loss_and_no_path():
    torch.manual_seed(5)
    crf = MMIBCRF(3)
    for parameter in crf.parameters():
        parameter.data.normal_()
    emissions = torch.randn(2, 3, 3)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    tags = torch.tensor([[1, 2, 0], [0, 0, 0]])
    with torch.no_grad():
        nll = crf.negative_log_likelihood(emissions, tags, mask)
        decoded = crf.decode(emissions, mask)
    log_partition, best, scores = brute_force(crf, emissions[0, :2], 2)
    assert nll[0].item() == pytest.approx((log_partition - scores[(1, 2)]).item(), abs=1e-5)
    assert nll[1].item() == 0.0
    assert decoded[0, :2].tolist() == best and decoded[1].tolist() == [-100, -100, -100]


def log_space_log_partition(crf: MMIBCRF, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The textbook log-space forward algorithm, differentiated by autograd: the reference for the fused one."""
    scores = crf.start_transitions + emissions[:, 0]
    for position in range(1, emissions.shape[1]):
        step = torch.logsumexp(scores[:, :, None] + crf.transitions + emissions[:, position, None, :], dim=1)
        scores = torch.where(mask[:, position, None], step, scores)
    return torch.logsumexp(scores + crf.end_transitions, dim=1)


@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_crf_scaled_forward_backward_matches_log_space_values_and_gradients(scale):
    torch.manual_seed(6)
    crf = MMIBCRF(5)
    for parameter in crf.parameters():
        parameter.data.normal_(std=scale)
    emissions = (torch.randn(4, 7, 5) * scale).requires_grad_()
    mask = torch.arange(7)[None, :] < torch.tensor([7, 3, 1, 0])[:, None]
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0])  # a non-uniform upstream gradient per post
    fused = crf.log_partition(emissions, mask)
    fused_grads = torch.autograd.grad((fused * weights).sum(), [emissions, *crf.parameters()])
    reference = log_space_log_partition(crf, emissions, mask)
    reference_grads = torch.autograd.grad((reference * weights).sum(), [emissions, *crf.parameters()])
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5 * scale)
    for fused_grad, reference_grad in zip(fused_grads, reference_grads):
        torch.testing.assert_close(fused_grad, reference_grad, rtol=1e-4, atol=1e-5)


def test_crf_gradient_passes_gradcheck_in_float64():
    torch.manual_seed(7)
    crf = MMIBCRF(3).double()
    for parameter in crf.parameters():
        parameter.data.normal_()
    emissions = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    assert torch.autograd.gradcheck(lambda e, *p: crf.log_partition(e, mask), (emissions, *crf.parameters()))


def set_crf_scores(crf: MMIBCRF, start=None, end=None, transitions=None) -> MMIBCRF:
    with torch.no_grad():
        for parameter, values in [
            (crf.start_transitions, start),
            (crf.end_transitions, end),
            (crf.transitions, transitions),
        ]:
            if values is not None:
                parameter.copy_(torch.as_tensor(values, dtype=parameter.dtype))
    return crf


def uses_scaled_forward(log_partition: torch.Tensor) -> bool:
    return type(log_partition.grad_fn).__name__ == "_CRFLogPartitionBackward"


EXTREME_TABLES = {
    "start": {"start": [0.0, -200.0, 5.0]},
    "end": {"end": [-150.0, 0.0, 3.0]},
    "transitions": {"transitions": [[0.0, -200.0, 5.0], [1.0, 0.0, -150.0], [2.0, 3.0, 0.0]]},
}


@pytest.mark.parametrize("table", ["start", "end", "transitions", "emissions"])
def test_crf_with_an_extreme_score_table_uses_the_log_space_recursion(table):
    """Any exponentiated table (start, end, transitions, a word's emissions) beyond the scaled forward's range
    sends log Z to the log-space recursion, with brute-force values and log-space gradients; moderate tables keep
    the scaled forward."""
    torch.manual_seed(8)
    crf = set_crf_scores(
        MMIBCRF(3), start=[0.5, -1.0, 2.0], end=[1.0, 0.0, -0.5], transitions=torch.randn(3, 3).tolist()
    )
    emissions = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    assert uses_scaled_forward(crf.log_partition(emissions, mask))
    if table == "emissions":
        emissions[1, 2] = torch.tensor([0.0, -120.0, 1.0])
    else:
        set_crf_scores(crf, **EXTREME_TABLES[table])
    emissions.requires_grad_()
    log_partition = crf.log_partition(emissions, mask)
    assert not uses_scaled_forward(log_partition)
    assert torch.isfinite(log_partition).all()
    for row, length in enumerate([4, 3]):
        assert log_partition[row].item() == pytest.approx(brute_force(crf, emissions[row, :length], length)[0].item())
    gradients = torch.autograd.grad(log_partition.sum(), [emissions, *crf.parameters()])
    reference = log_space_log_partition(crf, emissions, mask)
    for gradient, expected in zip(gradients, torch.autograd.grad(reference.sum(), [emissions, *crf.parameters()])):
        torch.testing.assert_close(gradient, expected)


def test_crf_scaled_forward_falls_back_when_a_forward_score_underflows():
    """Every table spans at most 60 nats, yet label 1 at word 1 (emission -55, entered at -60) has a forward
    score of exp(-115): below fp32's range, while it carries the best path (leaving label 0 costs 60 more)."""
    crf = set_crf_scores(MMIBCRF(2), transitions=[[-60.0, -60.0], [0.0, 0.0]])
    emissions = torch.tensor([[[0.0, -55.0], [0.0, -55.0], [0.0, 0.0]]], requires_grad=True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    log_partition = crf.log_partition(emissions, mask)
    expected_log_z, _, expected_marginals = exhaustive(crf, emissions.detach(), [3])
    torch.testing.assert_close(log_partition.double(), expected_log_z, rtol=1e-6, atol=0.0)
    (gradient,) = torch.autograd.grad(log_partition.sum(), emissions)
    torch.testing.assert_close(gradient.double(), expected_marginals, atol=1e-5, rtol=0.0)


BIO_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]

FORBIDDEN = -10000.0


def bio_crf(constrained: str) -> MMIBCRF:
    """A CRF with random scores and the BIO constraints users add: -10000 on I- tags at the start or the end, or on
    the transitions into an I- tag from anything but its own B- or I- tag."""
    torch.manual_seed(9)
    crf = MMIBCRF(len(BIO_LABELS))
    for parameter in crf.parameters():
        parameter.data.normal_()
    inside = torch.tensor([label.startswith("I-") for label in BIO_LABELS])
    with torch.no_grad():
        if constrained in ("start", "all"):
            crf.start_transitions[inside] = FORBIDDEN
        if constrained in ("end", "all"):
            crf.end_transitions[inside] = FORBIDDEN
        if constrained in ("transitions", "all"):
            for previous, label in itertools.product(range(len(BIO_LABELS)), repeat=2):
                if BIO_LABELS[label].startswith("I-") and BIO_LABELS[previous][2:] != BIO_LABELS[label][2:]:
                    crf.transitions[previous, label] = FORBIDDEN
    return crf


def exhaustive(
    crf: MMIBCRF, emissions: torch.Tensor, lengths: list[int]
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """log Z, every path's score and the label marginals of each post by enumeration in float64 (the marginals are
    zero past a post's length)."""
    start, end, transitions = (
        parameter.detach().double() for parameter in (crf.start_transitions, crf.end_transitions, crf.transitions)
    )
    emissions = emissions.double()
    num_labels = emissions.shape[-1]
    log_partitions, all_scores = [], []
    marginals = torch.zeros_like(emissions)
    for post, length in enumerate(lengths):
        paths = torch.tensor(list(itertools.product(range(num_labels), repeat=length)))
        scores = start[paths[:, 0]] + end[paths[:, -1]] + emissions[post, torch.arange(length), paths].sum(dim=1)
        scores = scores + transitions[paths[:, :-1], paths[:, 1:]].sum(dim=1)
        log_partition = torch.logsumexp(scores, dim=0)
        probabilities = (scores - log_partition).exp()
        for position in range(length):
            marginals[post, position].index_add_(0, paths[:, position], probabilities)
        log_partitions.append(log_partition)
        all_scores.append(scores)
    return torch.stack(log_partitions), all_scores, marginals


def path_index(path: torch.Tensor) -> int:
    """Where `exhaustive` puts a path's score: it enumerates in `itertools.product` order, the labels in base K."""
    return sum(label * len(BIO_LABELS) ** position for position, label in enumerate(reversed(path.tolist())))


@pytest.mark.parametrize("gap", [100.0, 500.0, 1e4])
@pytest.mark.parametrize("constrained", ["start", "end", "transitions", "all"])
def test_crf_with_bio_constraints_and_large_emission_gaps_matches_enumeration(constrained, gap):
    """Each word's emissions favour one label by `gap` nats, and the favoured labels break the constraints (an I-
    tag first and last, I-PER after O): log Z, its gradient, the loss, the Viterbi path and the marginals equal
    enumeration in float64."""
    crf = bio_crf(constrained)
    lengths = [4, 3, 1]
    favoured = torch.tensor([[2, 0, 2, 4], [4, 3, 2, 0], [2, 0, 0, 0]])
    generator = torch.Generator().manual_seed(10)
    emissions = -gap * (0.5 + 0.5 * torch.rand(3, 4, len(BIO_LABELS), generator=generator))
    emissions.scatter_(2, favoured[:, :, None], 0.0)
    emissions[1, 3] = 7.0  # padding
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    gold = torch.tensor([[1, 2, 0, 3], [3, 4, 2, 0], [0, 0, 0, 0]])
    expected_log_z, scores, expected_marginals = exhaustive(crf, emissions, lengths)
    tolerance = {"rtol": 1e-6, "atol": 1e-3}  # fp32 sums of scores near 1e4 nats
    # fp32 holds a score of `gap` nats to about gap * 6e-8; a probability is the exponential of such differences.
    probability_tolerance = {"rtol": 0.0, "atol": 1e-5 + gap * 2e-7}

    emissions.requires_grad_()
    log_partition = crf.log_partition(emissions, mask)
    torch.testing.assert_close(log_partition.double(), expected_log_z, **tolerance)
    (gradient,) = torch.autograd.grad(log_partition.sum(), emissions)
    torch.testing.assert_close(gradient.double(), expected_marginals, **probability_tolerance)
    with torch.no_grad():
        loss = crf.negative_log_likelihood(emissions, gold, mask)
        decoded = crf.decode(emissions, mask)
        marginals = crf.marginals(emissions, mask)
    for post, length in enumerate(lengths):
        expected_loss = expected_log_z[post] - scores[post][path_index(gold[post, :length])]
        assert loss[post].item() == pytest.approx(expected_loss.item(), rel=1e-6, abs=1e-3)
        best = scores[post][path_index(decoded[post, :length])]
        assert best.item() == pytest.approx(scores[post].max().item(), rel=1e-6, abs=1e-3)
        assert (decoded[post, length:] == -100).all()
    torch.testing.assert_close(marginals.double(), expected_marginals, **probability_tolerance)


def valid_bio(path: tuple[int, ...]) -> bool:
    """Whether a path keeps `bio_crf("all")`'s constraints."""
    names = [BIO_LABELS[label] for label in path]
    return not names[-1].startswith("I-") and all(
        not name.startswith("I-") or (index > 0 and names[index - 1][2:] == name[2:])
        for index, name in enumerate(names)
    )


def test_span_probability_matches_enumeration_under_bio_constraints():
    crf = bio_crf("all").double()
    lengths = [4, 3, 1, 2, 4]
    emissions = torch.randn(len(lengths), 4, len(BIO_LABELS), dtype=torch.float64) * 2
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    probabilities = [path_probabilities(crf, emissions[post], length) for post, length in enumerate(lengths)]
    # The constraints hold: a path with an I- tag first, last or after another type's tag has no probability.
    assert all(p == 0 for post in probabilities for path, p in post.items() if not valid_bio(path))
    with torch.no_grad():
        viterbi = crf.decode(emissions, mask)
    # Tags of two kinds: the Viterbi path, and (post 4) a valid path that is not the best one.
    tags = viterbi.clone()
    best = tuple(viterbi[4].tolist())
    other = max((path for path in probabilities[4] if path != best), key=probabilities[4].get)
    tags[4] = torch.tensor(other)
    # Post 1 has no span; the spans are not in post order and overlap.
    spans = [(3, 0, 2), (0, 1, 4), (0, 0, 1), (2, 0, 1), (0, 3, 4), (3, 1, 2), (0, 0, 4), (4, 1, 3), (4, 0, 4)]
    with torch.no_grad():
        scores = crf.span_probability(emissions, mask, tags, spans)
        as_tensor = crf.span_probability(emissions, mask, tags, torch.tensor(spans))
    assert scores.dtype == torch.float64 and torch.equal(scores, as_tensor)
    for (post, start, end), score in zip(spans, scores.tolist(), strict=True):
        wanted = tuple(tags[post, start:end].tolist())
        expected = sum(p for path, p in probabilities[post].items() if path[start:end] == wanted)
        assert expected > 0 and score == pytest.approx(expected, rel=1e-9, abs=1e-12), (post, start, end)
    assert crf.span_probability(emissions, mask, tags, []).shape == (0,)
