"""A random CRF and the probability of every label path by enumeration: the brute force that the CRF's and the
predictor's scores are checked against."""

import itertools

import torch

from mmib.crf_mmib import MMIBCRF


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
