"""The linear-chain CRF of MMIB's NER head: negative log-likelihood, Viterbi, marginals and span probabilities."""

from collections.abc import Sequence

import torch
from torch import nn


class MMIBCRF(nn.Module):
    """
    Linear-chain CRF over word positions, vectorised over the batch.

    Every method takes `mask` of shape `(B, W)`, True for the words of each post: a prefix of each row. A row may be
    empty (a post whose words were all truncated away): its negative log-likelihood is 0 and its path all -100.
    """

    def __init__(self, num_labels: int):
        super().__init__()
        self.start_transitions = nn.Parameter(torch.zeros(num_labels))
        self.end_transitions = nn.Parameter(torch.zeros(num_labels))
        self.transitions = nn.Parameter(torch.zeros(num_labels, num_labels))

    @staticmethod
    def _check_mask(mask: torch.Tensor) -> None:
        if (mask[:, 1:] & ~mask[:, :-1]).any():
            raise ValueError("The word mask must be a prefix of each row (words padded at the end only).")

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        log Z of each post by the forward algorithm. `emissions` (B, W, K) -> `(B,)`.

        Runs in scaled probability space, one `(B, K) @ (K, K)` product per word, with the gradient computed by the
        backward recursion (the label marginals) instead of autograd through every step: [`_CRFLogPartition`]. Its
        result equals the log-space recursion to fp32 rounding (relative 1e-6 on log Z). It is used only where it
        is exact: every exponentiated table (start, end and transition scores, each word's emissions) must span at
        most `_MAX_EXP_SPAN` nats, and afterwards no forward score may have underflowed (a label that is unlikely
        at one word can still carry the best path, e.g. under BIO constraints with confident emissions). Otherwise,
        and for inputs below fp32, the log-space recursion gives log Z.
        """
        if emissions.dtype in (torch.float32, torch.float64) and self._exp_spans_fit(emissions):
            # A bf16 model keeps bf16 transitions; the recursion runs in the emissions' (fp32) precision.
            start, end, transitions = (
                tensor.to(emissions.dtype)
                for tensor in (self.start_transitions, self.end_transitions, self.transitions)
            )
            log_partition, exact = _CRFLogPartition.apply(emissions, start, end, transitions, mask)
            if exact.item():
                return log_partition
        scores = self.start_transitions + emissions[:, 0]
        for position in range(1, emissions.shape[1]):
            step = torch.logsumexp(scores[:, :, None] + self.transitions + emissions[:, position, None, :], dim=1)
            scores = torch.where(mask[:, position, None], step, scores)
        return torch.logsumexp(scores + self.end_transitions, dim=1)

    def _exp_spans_fit(self, emissions: torch.Tensor) -> bool:
        """Whether every table that the scaled forward exponentiates spans at most `_MAX_EXP_SPAN` nats."""
        with torch.no_grad():
            spans = torch.stack(
                [
                    (tensor.amax() - tensor.amin()).to(emissions.dtype)
                    for tensor in (self.start_transitions, self.end_transitions, self.transitions)
                ]
                + [(emissions.amax(dim=2) - emissions.amin(dim=2)).amax()]
            )
            return bool((spans <= _MAX_EXP_SPAN).all().item())

    def path_score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised score of the label path `tags` (B, W) (values at masked positions are ignored) -> `(B,)`."""
        tags = tags.masked_fill(~mask, 0)
        weights = mask.to(emissions.dtype)
        emission_scores = (emissions.gather(2, tags[:, :, None]).squeeze(2) * weights).sum(dim=1)
        transition_scores = (self.transitions[tags[:, :-1], tags[:, 1:]] * weights[:, 1:]).sum(dim=1)
        last_tags = tags.gather(1, (mask.sum(dim=1) - 1).clamp(min=0)[:, None]).squeeze(1)
        return (
            self.start_transitions[tags[:, 0]] + emission_scores + transition_scores + self.end_transitions[last_tags]
        )

    def negative_log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """-log p(tags | emissions) of each post, `(B,)` (paper eq. 27); 0 for a post without words."""
        self._check_mask(mask)
        negative_log_likelihood = self.log_partition(emissions, mask) - self.path_score(emissions, tags, mask)
        return negative_log_likelihood * mask[:, 0].to(negative_log_likelihood.dtype)

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.LongTensor:
        """Viterbi decoding: the best label path of each post, `(B, W)`, -100 at masked positions."""
        self._check_mask(mask)
        num_words = emissions.shape[1]
        labels = torch.arange(emissions.shape[2], device=emissions.device)
        scores = self.start_transitions + emissions[:, 0]
        # Indexed (next, previous): the max runs over the last, contiguous dimension. A max over a middle dimension
        # of these tiny tensors is split across threads, which stalls for milliseconds on a busy CPU.
        incoming = self.transitions.T.contiguous()
        backpointers = []
        for position in range(1, num_words):
            best, best_previous = (scores[:, None, :] + incoming).max(dim=2)
            inside = mask[:, position, None]
            # Past a post's last word the pointers are the identity, so backtracking carries its last tag back.
            backpointers.append(torch.where(inside, best_previous, labels))
            scores = torch.where(inside, best + emissions[:, position], scores)
        current = (scores + self.end_transitions).argmax(dim=1, keepdim=True)
        path = [current]
        for pointers in reversed(backpointers):
            current = pointers.gather(1, current)
            path.append(current)
        return torch.cat(path[::-1], dim=1).masked_fill(~mask, -100)

    def forward_backward(
        self, emissions: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Forward and backward log scores of every (word, label).

        Returns:
            `(alpha, beta, log_z)`: `alpha[b, t, k]` = log of the summed scores of all label prefixes `y_0..y_t` with
            `y_t = k` (emission at `t` included), `beta[b, t, k]` = log of the summed scores of all continuations
            `y_{t+1}..` after `y_t = k` (end transition included, emission at `t` not), both `(B, W, K)` and only
            meaningful at unmasked words; `log_z` `(B,)`. So `alpha + beta - log_z[:, None, None]` is the log
            marginal probability of label `k` at word `t`.
        """
        self._check_mask(mask)
        num_words = emissions.shape[1]
        transitions = self.transitions.to(emissions.dtype)
        alphas = [self.start_transitions.to(emissions.dtype) + emissions[:, 0]]
        for position in range(1, num_words):
            step = torch.logsumexp(alphas[-1][:, :, None] + transitions + emissions[:, position, None, :], dim=1)
            alphas.append(torch.where(mask[:, position, None], step, alphas[-1]))
        end = self.end_transitions.to(emissions.dtype)
        last = mask.sum(dim=1) - 1
        betas = [None] * num_words
        betas[-1] = end.expand(emissions.shape[0], -1)
        for position in range(num_words - 2, -1, -1):
            step = torch.logsumexp(transitions + (emissions[:, position + 1] + betas[position + 1])[:, None, :], dim=2)
            # The last word of a shorter post only has the end transition after it.
            betas[position] = torch.where((last == position)[:, None], end, step)
        alpha, beta = torch.stack(alphas, dim=1), torch.stack(betas, dim=1)
        log_z = torch.logsumexp(alphas[-1] + end, dim=1)
        return alpha, beta, log_z

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """p(y_t = k | post) for every word, `(B, W, K)`; zeros at masked positions."""
        alpha, beta, log_z = self.forward_backward(emissions, mask)
        # Masked before exp: past a post's end the sum is meaningless and can overflow (inf * 0 would be NaN).
        return (alpha + beta - log_z[:, None, None]).masked_fill(~mask[:, :, None], float("-inf")).exp()

    def span_probability(
        self,
        emissions: torch.Tensor,
        mask: torch.Tensor,
        tags: torch.LongTensor,
        spans: torch.LongTensor | Sequence[tuple[int, int, int]],
    ) -> torch.Tensor:
        """
        Probability that the words of each span carry exactly the given labels, whatever the other words carry:
        p(y_s..y_{e-1} = tags[b, s..e-1] | post b) = exp(alpha[s, y_s] + sum_{t=s+1}^{e-1} (transition(y_{t-1},
        y_t) + emission(t, y_t)) + beta[e-1, y_{e-1}] - log Z).

        Computed only where it is read: the forward-backward recursion runs over the posts that have a span, and all
        spans are scored at once from prefix sums of the path's emission and transition scores (in float64, so that
        the differences of prefix sums keep the emissions' precision) instead of a few small tensor operations per
        span.

        Args:
            emissions (`torch.Tensor` of shape `(B, W, K)`), mask (`(B, W)`): as for `decode`.
            tags (`torch.LongTensor` of shape `(B, W)`): labels per word (e.g. the Viterbi path; -100 at padding).
            spans (`torch.LongTensor` of shape `(N, 3)`, or a sequence of `(post, start, end)`): word offsets, end
                exclusive, inside the post's unmasked words.

        Returns:
            `torch.Tensor` of shape `(N,)`, in the emissions' dtype.
        """
        spans = torch.as_tensor(spans, dtype=torch.long, device=emissions.device).reshape(-1, 3)
        if len(spans) == 0:
            return emissions.new_zeros(0)
        rows, post = torch.unique(spans[:, 0], return_inverse=True)
        emissions, mask = emissions[rows], mask[rows]
        tags = tags[rows].masked_fill(~mask, 0)
        alpha, beta, log_z = self.forward_backward(emissions, mask)
        start, last = spans[:, 1], spans[:, 2] - 1
        path_emissions = emissions.gather(2, tags[:, :, None]).squeeze(2).double()
        path_transitions = nn.functional.pad(self.transitions.double()[tags[:, :-1], tags[:, 1:]], (1, 0))
        prefix = (path_emissions + path_transitions).cumsum(dim=1)
        # Words start+1 .. last: their emissions and the transitions into them.
        inside = prefix[post, last] - prefix[post, start]
        first_tag, last_tag = tags[post, start], tags[post, last]
        score = alpha[post, start, first_tag].double() + inside + beta[post, last, last_tag].double() - log_z[post]
        return score.exp().to(emissions.dtype)


# Largest spread (max - min, in nats) of a score table that the CRF's scaled forward algorithm exponentiates: the
# exponentials stay far from fp32's underflow at exp(-87), and one step's `alpha @ exp(transitions)` stays above
# exp(-60) / K, so the terms it loses to underflow are negligible. Products of tables can still underflow: the
# forward checks its scores afterwards.
_MAX_EXP_SPAN = 60.0


class _CRFLogPartition(torch.autograd.Function):
    """
    log Z of a linear-chain CRF and its gradient (the label marginals) by the scaled forward-backward algorithm.

    A log-space forward algorithm costs about five small kernels per word forward and as many autograd nodes
    backward. In probability space one step is a `(B, K) @ (K, K)` product, an elementwise product with the
    exponentiated emissions and a normalisation (Rabiner's scaling, which keeps every step in fp32 range); the
    backward pass is the matching backward recursion, with no autograd graph at all.

    Returns `(log_partition, exact)`: `exact` is a bool scalar, False when a forward score (before or after its
    normalisation) or the final sum fell below the smallest normal number, where the result loses precision or
    becomes -inf or NaN; the caller then uses the log-space recursion.
    """

    @staticmethod
    def forward(ctx, emissions, start_transitions, end_transitions, transitions, mask):
        with torch.autocast(emissions.device.type, enabled=False):
            emission_max = emissions.max(dim=2, keepdim=True).values
            exp_emissions = (emissions - emission_max).exp()
            transition_max = transitions.max()
            exp_transitions = (transitions - transition_max).exp()
            start_max, end_max = start_transitions.max(), end_transitions.max()
            exp_end = (end_transitions - end_max).exp()
            alpha = (start_transitions - start_max).exp() * exp_emissions[:, 0]
            alphas, scales = [], []
            for position in range(emissions.shape[1]):
                if position > 0:
                    alpha = torch.where(
                        mask[:, position, None],
                        (alphas[-1] @ exp_transitions) * exp_emissions[:, position],
                        alphas[-1],
                    )
                scale = alpha.sum(dim=1, keepdim=True)
                alpha = alpha / scale
                alphas.append(alpha)
                scales.append(scale)
            end_scale = (alpha * exp_end).sum(dim=1)
            weights = mask.to(emissions.dtype)
            weights[:, 0] = 1.0
            log_scales = torch.cat(scales, dim=1).log()
            log_partition = (
                ((log_scales + emission_max.squeeze(2)) * weights).sum(dim=1)
                + transition_max * (weights.sum(dim=1) - 1)
                + start_max
                + end_max
                + end_scale.log()
            )
            stacked = torch.stack(alphas, 1)
            finfo = torch.finfo(emissions.dtype)
            # The comparisons are False for NaN. The end sum may lose terms below `tiny`, hence the eps margin.
            unnormalised = stacked * torch.cat(scales, dim=1)[:, :, None]
            scores_normal = (torch.minimum(stacked, unnormalised) >= finfo.tiny).all()
            exact = scores_normal & (end_scale >= finfo.tiny / finfo.eps).all()
        ctx.mark_non_differentiable(exact)
        ctx.save_for_backward(exp_emissions, exp_transitions, exp_end, mask, stacked)
        ctx.scales, ctx.end_scale = scales, end_scale
        return log_partition, exact

    @staticmethod
    def backward(ctx, grad_output, grad_exact):
        exp_emissions, exp_transitions, exp_end, mask, alphas = ctx.saved_tensors
        num_words = alphas.shape[1]
        # beta scaled so that sum_k alpha_t(k) beta_t(k) = 1: alpha_t * beta_t is the marginal of word t.
        beta = (exp_end / ctx.end_scale[:, None]).expand_as(alphas[:, 0])
        betas = [beta] * num_words
        messages = []
        for position in range(num_words - 1, 0, -1):
            message = exp_emissions[:, position] * betas[position] / ctx.scales[position]
            message = message * mask[:, position, None]
            messages.append(message)
            betas[position - 1] = torch.where(mask[:, position, None], message @ exp_transitions.T, betas[position])
        scale = grad_output[:, None, None]
        marginals = alphas * torch.stack(betas, 1) * scale
        grad_emissions = marginals * mask[:, :, None]
        grad_emissions[:, 0] = marginals[:, 0]
        grad_start = marginals[:, 0].sum(dim=0)
        last = alphas.gather(1, (mask.sum(dim=1) - 1).clamp(min=0)[:, None, None].expand(-1, 1, alphas.shape[2]))
        grad_end = (last.squeeze(1) * exp_end / ctx.end_scale[:, None] * grad_output[:, None]).sum(dim=0)
        grad_transitions = torch.zeros_like(exp_transitions)
        if messages:
            previous = (alphas[:, :-1] * scale).flatten(0, 1)
            following = torch.stack(messages[::-1], 1).flatten(0, 1)
            grad_transitions = exp_transitions * (previous.T @ following)
        return grad_emissions, grad_start, grad_end, grad_transitions, None


__all__ = ["MMIBCRF"]
