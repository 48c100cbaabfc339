"""CRF marginals and span probabilities against brute-force enumeration of every label sequence."""

import itertools

import torch

from mmib.modeling_mmib import MMIBCRF


def random_crf(num_labels: int, seed: int) -> MMIBCRF:
    torch.manual_seed(seed)
    crf = MMIBCRF(num_labels)
    for parameter in crf.parameters():
        torch.nn.init.normal_(parameter)
    return crf.double()


@torch.no_grad()
def path_probabilities(crf: MMIBCRF, emissions: torch.Tensor, length: int) -> dict[tuple[int, ...], float]:
    """p(path) for every label path of one post of `length` words, by enumeration."""
    scores = {}
    for path in itertools.product(range(emissions.shape[-1]), repeat=length):
        score = crf.start_transitions[path[0]] + crf.end_transitions[path[-1]]
        score = score + sum(emissions[t, label] for t, label in enumerate(path))
        score = score + sum(crf.transitions[a, b] for a, b in zip(path[:-1], path[1:]))
        scores[path] = score
    log_z = torch.logsumexp(torch.stack(list(scores.values())), dim=0)
    return {path: float((score - log_z).exp()) for path, score in scores.items()}


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
