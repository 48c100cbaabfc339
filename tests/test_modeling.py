"""MMIB model behaviour on tiny random towers: CRF, regularizers, masking, modes, gradients, image paths."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from conftest import IMAGE_SIZE, tiny_config, tiny_text_config
from mmib import MMIBForRelationClassification, MMIBForTokenClassification, MMIBModel
from mmib.modeling_mmib import MMIBCRF, mmib_total_loss

NUM_SLOTS = 3  # 1 image + num_crops=2


def make_batch(seed: int = 0, vocab_size: int = 64) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (3, 8), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    attention_mask[2, 7:] = 0
    input_ids[attention_mask == 0] = 0
    word_index = torch.tensor([[1, 2, 4, 6], [1, 3, -1, -1], [1, 2, 3, 5]])
    labels = torch.randint(0, 9, (3, 4), generator=generator)
    labels[word_index < 0] = -100
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "word_index": word_index,
        "labels": labels,
        "pixel_values": torch.randn(3, NUM_SLOTS, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "image_mask": torch.tensor([[True, True, False], [False, False, False], [True, False, True]]),
    }


def encoder_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without the NER-only keys: what `MMIBModel` and the relation head take."""
    return {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values", "image_mask")}


@pytest.fixture
def model() -> MMIBForTokenClassification:
    torch.manual_seed(0)
    return MMIBForTokenClassification(tiny_config()).eval()


# --- CRF against brute force -------------------------------------------------------------------------------------


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


# --- regularizers ------------------------------------------------------------------------------------------------


def closed_form_kl(mean: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor, reduction: str) -> float:
    total, count = 0.0, 0
    for post in range(mean.shape[0]):
        for position in range(mean.shape[1]):
            if not mask[post, position]:
                continue
            variance = logvar[post, position].exp()
            total += (0.5 * (mean[post, position] ** 2 + variance - 1 - logvar[post, position])).sum().item()
            count += 1
    if reduction == "sum":
        return total / mean.shape[0]
    return total / (count * mean.shape[-1]) if count else 0.0


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kl_equals_closed_form(reduction):
    torch.manual_seed(0)
    base = MMIBModel(tiny_config(kl_reduction=reduction)).eval()
    batch = make_batch()
    with torch.no_grad():
        outputs = base(**encoder_inputs(batch))
    expected_text = closed_form_kl(
        outputs.text_latent_mean, outputs.text_latent_logvar, batch["attention_mask"].bool(), reduction
    )
    expected_vision = closed_form_kl(
        outputs.vision_latent_mean, outputs.vision_latent_logvar, batch["image_mask"], reduction
    )
    assert outputs.kl_text.item() == pytest.approx(expected_text, rel=1e-5)
    assert outputs.kl_vision.item() == pytest.approx(expected_vision, rel=1e-5)


def test_alignment_loss_equals_hand_computation():
    torch.manual_seed(1)
    base = MMIBModel(tiny_config(num_negatives=2)).eval()
    text = torch.randn(4, 5, 32)
    text_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]).bool()
    vision = torch.randn(4, 3, 32)
    image_mask = torch.tensor([[1, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 0]]).bool()
    with torch.no_grad():
        loss = base._alignment_loss(text, text_mask, vision, image_mask)
        # Post 2 has no image: it takes part neither as a positive nor as a negative.
        posts = [0, 1, 3]
        text_pooled = [text[i][text_mask[i]].mean(0) for i in posts]
        vision_pooled = [vision[i][image_mask[i]].mean(0) for i in posts]
        score = lambda t, v: base.discriminator(t[None], v[None])[0]  # noqa: E731
        positive = -sum(F.logsigmoid(score(text_pooled[i], vision_pooled[i])) for i in range(3)) / 3
        negative_terms = [
            -F.logsigmoid(-score(text_pooled[i], vision_pooled[(i - shift) % 3])) for shift in (1, 2) for i in range(3)
        ]
        expected = positive + sum(negative_terms) / len(negative_terms)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_alignment_batch_of_one_has_no_negative_term():
    torch.manual_seed(2)
    base = MMIBModel(tiny_config()).eval()
    text, vision = torch.randn(1, 4, 32), torch.randn(1, 3, 32)
    text_mask, image_mask = torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        loss = base._alignment_loss(text, text_mask, vision, image_mask)
        expected = -F.logsigmoid(base.discriminator(text.mean(1), vision.mean(1)))[0]
        no_image = base._alignment_loss(text, text_mask, vision, torch.zeros(1, 3, dtype=torch.bool))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert no_image.item() == 0.0


# --- masking, modes, image paths ------------------------------------------------------------------------------------


def test_padded_tokens_and_absent_crops_do_not_change_outputs(model):
    """Token ids under padding and the features of absent image slots reach no output; a present slot's do."""
    batch = make_batch()
    del batch["pixel_values"]
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(3, NUM_SLOTS, model.config.vision_feature_size, generator=generator)
    batch["image_features"] = features
    changed = {key: value.clone() for key, value in batch.items()}
    changed["input_ids"][batch["attention_mask"] == 0] = 7
    absent = ~batch["image_mask"]
    changed["image_features"][absent] = 10.0 * torch.randn(int(absent.sum()), features.shape[-1], generator=generator)
    present = {**batch, "image_features": features.clone()}
    present["image_features"][0, 1] += 10.0
    with torch.no_grad():
        first, second, third = model(**batch), model(**changed), model(**present)
    for field in ("logits", "kl_text", "kl_vision", "alignment_loss", "loss"):
        assert torch.allclose(first[field], second[field], atol=1e-5), field
    assert torch.equal(first.predictions, second.predictions)
    assert not torch.allclose(first.logits[0], third.logits[0], atol=1e-3)


def test_eval_without_labels_skips_only_training_work(model):
    """The rule: an eval-mode head without labels runs no log-variance encoder, KL or discriminator."""
    batch = make_batch()
    calls = []
    hooks = [
        module.register_forward_hook(lambda *_, name=name: calls.append(name))
        for name, module in model.named_modules()
        if name.endswith("logvar_encoder") or name.endswith("discriminator")
    ]
    with torch.no_grad():
        with_labels = model(**batch)
        assert sorted(set(calls)) == [
            "mmib.discriminator",
            "mmib.text_variational_encoder.logvar_encoder",
            "mmib.vision_variational_encoder.logvar_encoder",
        ]
        calls.clear()
        without_labels = model(**{key: value for key, value in batch.items() if key != "labels"})
    for hook in hooks:
        hook.remove()
    assert calls == []
    assert without_labels.loss is None and without_labels.kl_text is None and without_labels.alignment_loss is None
    assert torch.equal(without_labels.logits, with_labels.logits)
    assert torch.equal(without_labels.predictions, with_labels.predictions)
    assert with_labels.kl_text is not None and torch.isfinite(with_labels.loss)


def test_text_only_posts_work(model):
    """A post without images gets no cross-modal attention: its fused states are the text-to-vision APEnc with a zero
    attention output (residual, LayerNorm, feed-forward), whether the batch holds no image inputs, masked slots
    only, or other posts' images; it adds no vision KL and no alignment loss."""
    batch = make_batch()
    text_inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
    with torch.no_grad():
        without_images = model(**text_inputs, word_index=batch["word_index"], labels=batch["labels"])
        all_masked = model(**{**batch, "image_mask": torch.zeros(3, NUM_SLOTS, dtype=torch.bool)})
        base = model.mmib(**text_inputs)
        fusion = model.mmib.text_to_vision_encoder
        hidden = fusion.attention_layer_norm(base.text_latent_mean)
        expected = fusion.output_layer_norm(hidden + fusion.feed_forward(hidden))
        mixed = model.mmib(**encoder_inputs(batch))
    assert torch.isfinite(without_images.logits).all() and torch.isfinite(without_images.loss)
    assert without_images.kl_vision.item() == 0.0 and without_images.alignment_loss.item() == 0.0
    torch.testing.assert_close(base.last_hidden_state, expected)
    assert torch.allclose(without_images.logits, all_masked.logits, atol=1e-5)
    # Post 1 has no image in `make_batch`, beside two posts that have one.
    torch.testing.assert_close(mixed.last_hidden_state[1], expected[1])
    assert not torch.allclose(mixed.last_hidden_state[0], expected[0], atol=1e-3)


def test_eval_is_deterministic_and_train_samples():
    torch.manual_seed(0)
    text_config = tiny_text_config()
    text_config.hidden_dropout_prob = text_config.attention_probs_dropout_prob = 0.0
    model = MMIBModel(tiny_config(text_config=text_config, apenc_dropout=0.0))
    batch = make_batch()
    inputs = encoder_inputs(batch)
    with torch.no_grad():
        model.eval()
        first, second = model(**inputs), model(**inputs)
        model.train()
        sampled = [model(**inputs) for _ in range(2)]
    assert torch.equal(first.last_hidden_state, second.last_hidden_state)
    # Without dropout, only the reparameterised sample z = mean + sigma * eps differs between train calls.
    assert torch.allclose(sampled[0].text_latent_mean, sampled[1].text_latent_mean)
    assert torch.allclose(sampled[0].text_latent_mean, first.text_latent_mean, atol=1e-6)
    assert not torch.allclose(sampled[0].last_hidden_state, sampled[1].last_hidden_state)


def test_image_features_path_equals_pixel_values_path(model):
    batch = make_batch()
    with torch.no_grad():
        features = model.mmib.get_image_features(batch["pixel_values"])
        from_pixels = model(**batch)
        from_features = model(**{**batch, "pixel_values": None, "image_features": features})
    assert features.shape == (3, NUM_SLOTS, model.config.vision_feature_size)
    assert torch.allclose(from_pixels.logits, from_features.logits, atol=1e-5)
    assert torch.equal(from_pixels.predictions, from_features.predictions)


def test_cached_features_and_pixels_mix_in_one_batch(model):
    """Item 4: `image_feature_mask` says which slots `image_features` holds; the model computes the others."""
    batch = make_batch()
    present = batch["image_mask"].bool()
    with torch.no_grad():
        features = model.mmib.get_image_features(batch["pixel_values"])
        from_pixels = model(**batch)
        # Every other slot comes as a feature vector; the rest of the features tensor is garbage the model ignores.
        feature_mask = present & (torch.arange(NUM_SLOTS) % 2 == 0)
        given = torch.where(feature_mask[:, :, None], features, torch.full_like(features, float("nan")))
        pixels = batch["pixel_values"].masked_fill(feature_mask[:, :, None, None, None], float("nan"))
        mixed = model(**{**batch, "pixel_values": pixels}, image_features=given, image_feature_mask=feature_mask)
    assert feature_mask.any() and (present & ~feature_mask).any()
    assert torch.allclose(mixed.logits, from_pixels.logits, atol=1e-6)
    assert torch.equal(mixed.predictions, from_pixels.predictions)
    absent = ~present
    assert absent.any()
    with pytest.raises(ValueError, match="image_feature_mask marks slots that image_mask marks as absent"):
        model(**batch, image_features=features, image_feature_mask=present | absent)
    with pytest.raises(ValueError, match="present image slots are not in image_feature_mask and no pixel_values"):
        model(**{**batch, "pixel_values": None}, image_features=features, image_feature_mask=feature_mask)
    with pytest.raises(ValueError, match=r"image_feature_mask has shape \(3, 2\)"):
        model(**batch, image_features=features, image_feature_mask=feature_mask[:, :2])


def test_input_validation(model):
    batch = make_batch()
    with pytest.raises(ValueError, match="pass image_feature_mask to say which slots image_features holds"):
        model(**batch, image_features=torch.zeros(3, NUM_SLOTS, 16))
    with pytest.raises(ValueError, match="image_mask has shape"):
        model(**{**batch, "image_mask": torch.ones(3, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="vision_feature_size"):
        model(**{**batch, "pixel_values": None, "image_features": torch.zeros(3, NUM_SLOTS, 5)})
    with pytest.raises(ValueError, match=r"pixel_values has shape \(2, 3, 3, 32, 32\), expected .* = \(3, "):
        model(**{**batch, "pixel_values": batch["pixel_values"][:2]})


# --- gradients and the frozen tower ---------------------------------------------------------------------------------


def test_gradients_reach_every_trainable_parameter_and_not_the_frozen_tower(model):
    model.train()
    assert not model.mmib.vision_model.training
    model(**make_batch()).loss.backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(not name.startswith("mmib.vision_model.") for name in trainable)
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert all(p.grad is None for p in model.mmib.vision_model.parameters())


def test_frozen_tower_keeps_batchnorm_statistics(model):
    model.train()
    statistics = {k: v.clone() for k, v in model.mmib.vision_model.state_dict().items() if "running" in k}
    model(**make_batch())
    after = {k: v for k, v in model.mmib.vision_model.state_dict().items() if "running" in k}
    assert all(torch.equal(statistics[k], after[k]) for k in statistics)


def test_unfrozen_tower_trains():
    torch.manual_seed(0)
    model = MMIBForTokenClassification(tiny_config(freeze_vision_encoder=False)).train()
    assert model.mmib.vision_model.training
    model(**make_batch()).loss.backward()
    assert all(p.grad is not None for p in model.mmib.vision_model.parameters())


# --- relation head ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["start", "span_mean"])
def test_relation_head_uses_the_marked_states(pooling):
    torch.manual_seed(0)
    config = tiny_config(entity_pooling=pooling, id2label={0: "None", 1: "/per/per/peer", 2: "/loc/loc/contain"})
    model = MMIBForRelationClassification(config).eval()
    batch = make_batch()
    entity_positions = torch.tensor([[[1, 4], [5, 7]], [[2, 4], [0, 2]], [[1, 3], [4, 6]]])
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        outputs = model(**encoder_inputs(batch), entity_positions=entity_positions, labels=labels)
        states = model.mmib(**encoder_inputs(batch)).last_hidden_state
    vectors = []
    for post, ((head_start, head_end), (tail_start, tail_end)) in enumerate(entity_positions.tolist()):
        if pooling == "start":
            head, tail = states[post, head_start], states[post, tail_start]
        else:
            head = states[post, head_start + 1 : head_end].mean(0)
            tail = states[post, tail_start + 1 : tail_end].mean(0)
        vectors.append(torch.cat([head, tail]))
    expected_logits = model.classifier(torch.stack(vectors))
    assert outputs.logits.shape == (3, 3)
    assert torch.allclose(outputs.logits, expected_logits, atol=1e-5)
    assert outputs.task_loss.item() == pytest.approx(F.cross_entropy(expected_logits, labels).item(), rel=1e-5)


@pytest.mark.parametrize("pooling", ["start", "span_mean"])
def test_relation_head_pools_nested_and_identical_spans_over_their_own_words(pooling):
    torch.manual_seed(0)
    config = tiny_config(entity_pooling=pooling, id2label={0: "None", 1: "/per/per/peer", 2: "/loc/loc/contain"})
    model = MMIBForRelationClassification(config).eval()
    batch = encoder_inputs(make_batch())
    batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    batch["input_ids"] = batch["input_ids"].clamp(min=5)
    # The processor's marker order (tokens 0..7):
    #   [CLS] <s> <o> w </o> w </s> [SEP]   tail nested in head, shared start: head words 3, 5; tail word 3
    #   [CLS] <o> w <s> w </s> </o> [SEP]   head nested in tail, shared end:   head word 4; tail words 2, 4
    #   [CLS] <s> <o> w </o> </s> w [SEP]   identical:                          head word 3; tail word 3
    entity_positions = torch.tensor([[[1, 6], [2, 4]], [[3, 5], [1, 6]], [[1, 5], [2, 4]]])
    starts = [(1, 2), (3, 1), (1, 2)]
    words = [([3, 5], [3]), ([4], [2, 4]), ([3], [3])]
    with torch.no_grad():
        logits = model(**batch, entity_positions=entity_positions).logits
        states = model.mmib(**batch).last_hidden_state
    if pooling == "start":
        vectors = [torch.cat([states[post, head], states[post, tail]]) for post, (head, tail) in enumerate(starts)]
    else:
        vectors = [
            torch.cat([states[post, head].mean(0), states[post, tail].mean(0)])
            for post, (head, tail) in enumerate(words)
        ]
    assert torch.allclose(logits, model.classifier(torch.stack(vectors)), atol=1e-5)


def all_path_scores(crf: MMIBCRF, emissions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All label paths of one post (`(W, K)` emissions) and their scores: `(K**W, W)` paths, `(K**W,)` scores."""
    num_words, num_labels = emissions.shape
    paths = torch.tensor(list(itertools.product(range(num_labels), repeat=num_words)))
    scores = crf.start_transitions[paths[:, 0]] + crf.end_transitions[paths[:, -1]]
    scores = scores + emissions[torch.arange(num_words), paths].sum(dim=1)
    scores = scores + crf.transitions[paths[:, :-1], paths[:, 1:]].sum(dim=1)
    return paths, scores


def test_token_classification_loss_is_the_brute_force_crf_nll_plus_the_weighted_regularizers():
    torch.manual_seed(0)
    labels3 = {0: "O", 1: "B-PER", 2: "I-PER"}
    model = MMIBForTokenClassification(tiny_config(id2label=labels3, **WEIGHTS)).eval()
    for parameter in model.crf.parameters():
        parameter.data.normal_()  # transitions that matter
    batch = make_batch()
    batch["labels"] = batch["labels"] % 3
    batch["labels"][batch["word_index"] < 0] = -100
    with torch.no_grad():
        outputs = model(**batch)
    assert outputs.logits.shape == (3, 4, 3)
    nlls = []
    for post in range(3):
        length = int((batch["word_index"][post] >= 0).sum())
        paths, scores = all_path_scores(model.crf, outputs.logits[post, :length])
        gold = (paths == batch["labels"][post, :length]).all(dim=1)
        nlls.append((torch.logsumexp(scores, 0) - scores[gold][0]).item())
        assert outputs.predictions[post, :length].tolist() == paths[scores.argmax()].tolist()
    assert outputs.task_loss.item() == pytest.approx(sum(nlls) / 3, rel=1e-5)
    expected = sum(nlls) / 3 + 0.5 * outputs.kl_text + 0.25 * outputs.kl_vision + 2.0 * outputs.alignment_loss
    assert outputs.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_any_vision_model_with_a_pooled_output_works():
    from transformers import ViTConfig

    torch.manual_seed(0)
    vision_config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=30,
    )
    model = MMIBForTokenClassification(tiny_config(vision_config=vision_config)).eval()
    assert model.config.vision_feature_size == 24
    batch = make_batch()
    with torch.no_grad():
        outputs = model(**batch)
        features = model.mmib.get_image_features(batch["pixel_values"])
        # Independently: the ViT's own CLS token (its default pooling), one image at a time.
        assert model.config.vision_feature_pooling == "cls"
        for post, slot in itertools.product(range(3), range(NUM_SLOTS)):
            image = batch["pixel_values"][post, slot][None]
            expected = model.mmib.vision_model(pixel_values=image).last_hidden_state[0, 0]
            assert torch.allclose(features[post, slot], expected, atol=1e-5)
        from_features = model(**{**batch, "pixel_values": None, "image_features": features})
        changed = batch["pixel_values"].clone()
        changed[0, 0] = torch.randn(3, IMAGE_SIZE, IMAGE_SIZE)
        after_change = model(**{**batch, "pixel_values": changed})
    assert torch.allclose(outputs.logits, from_features.logits, atol=1e-5)
    # The ViT features reach the head: a different present image changes post 0, and only post 0.
    assert (after_change.logits[0] - outputs.logits[0]).abs().max() > 1e-5
    assert torch.allclose(after_change.logits[1:], outputs.logits[1:], atol=1e-6)


# --- one objective and the ablation switches --------------------------------------------------------------------


def no_dropout_config(**kwargs):
    text_config = tiny_text_config()
    text_config.hidden_dropout_prob = text_config.attention_probs_dropout_prob = 0.0
    return tiny_config(text_config=text_config, apenc_dropout=0.0, **kwargs)


WEIGHTS = dict(beta_text=0.5, beta_vision=0.25, alignment_weight=2.0)


def test_loss_is_the_weighted_sum_of_eq_29(model):
    model.config.update(WEIGHTS)
    with torch.no_grad():
        outputs = model(**make_batch())
    expected = (
        outputs.task_loss.item()
        + 0.5 * outputs.kl_text.item()
        + 0.25 * outputs.kl_vision.item()
        + 2.0 * outputs.alignment_loss.item()
    )
    assert outputs.loss.item() == pytest.approx(expected, rel=1e-6)
    assert outputs.kl_text.item() > 0 and outputs.kl_vision.item() > 0 and outputs.alignment_loss.item() > 0
    assert mmib_total_loss(model.config, outputs.task_loss).item() == outputs.task_loss.item()
    without_labels = model(**{**make_batch(), "labels": None})
    assert without_labels.loss is None and without_labels.task_loss is None


ABLATIONS = {
    # switches -> (prefixes of the parameters that must not exist, absent output fields)
    "no_refinement": (
        {"use_refinement_regularizer": False},
        ("mmib.text_variational_encoder.logvar_encoder.", "mmib.vision_variational_encoder.logvar_encoder."),
        ("kl_text", "kl_vision"),
    ),
    "no_alignment": ({"use_alignment_regularizer": False}, ("mmib.discriminator.",), ("alignment_loss",)),
    "no_regularizers": (
        {"use_refinement_regularizer": False, "use_alignment_regularizer": False},
        (
            "mmib.text_variational_encoder.logvar_encoder.",
            "mmib.vision_variational_encoder.logvar_encoder.",
            "mmib.discriminator.",
        ),
        ("kl_text", "kl_vision", "alignment_loss"),
    ),
    "text_only": (
        {"text_only": True},
        (
            "mmib.vision_model.",
            "mmib.vision_projection.",
            "mmib.vision_variational_encoder.",
            "mmib.discriminator.",
            "mmib.vision_to_text_encoder.",
            "mmib.text_to_vision_encoder.",
        ),
        ("kl_vision", "alignment_loss"),
    ),
}


@pytest.mark.parametrize("variant", list(ABLATIONS))
def test_ablation_switch_removes_its_term_and_its_modules(variant):
    switches, removed_prefixes, absent = ABLATIONS[variant]
    torch.manual_seed(0)
    full = MMIBForTokenClassification(tiny_config(freeze_vision_encoder=False, **WEIGHTS))
    torch.manual_seed(0)
    ablated = MMIBForTokenClassification(tiny_config(freeze_vision_encoder=False, **WEIGHTS, **switches)).train()
    full_names = {name for name, _ in full.named_parameters()}
    ablated_names = {name for name, _ in ablated.named_parameters()}
    # Exactly the disabled modules are gone; each of them existed in the full model.
    assert ablated_names <= full_names
    assert full_names - ablated_names == {name for name in full_names if name.startswith(removed_prefixes)}
    assert all(any(name.startswith(prefix) for name in full_names) for prefix in removed_prefixes)

    torch.manual_seed(1)
    outputs = ablated(**make_batch())
    for field in absent:
        assert getattr(outputs, field) is None, field
    weights = {"kl_text": 0.5, "kl_vision": 0.25, "alignment_loss": 2.0}
    expected = outputs.task_loss.item() + sum(
        weight * getattr(outputs, name).item() for name, weight in weights.items() if name not in absent
    )
    assert outputs.loss.item() == pytest.approx(expected, rel=1e-6)
    outputs.loss.backward()
    # Everything that is left (the unfrozen vision tower included) gets a gradient.
    assert [name for name, p in ablated.named_parameters() if p.grad is None] == []


def test_without_refinement_the_latent_is_the_mean_in_training():
    torch.manual_seed(0)
    model = MMIBModel(no_dropout_config(use_refinement_regularizer=False)).train()
    inputs = encoder_inputs(make_batch())
    with torch.no_grad():
        first, second = model(**inputs), model(**inputs)
        model.eval()
        evaluated = model(**inputs)
    assert first.text_latent_logvar is None and first.vision_latent_logvar is None
    assert torch.equal(first.last_hidden_state, second.last_hidden_state)
    assert torch.allclose(first.last_hidden_state, evaluated.last_hidden_state, atol=1e-6)


def test_text_only_model_is_the_text_path_and_ignores_images(tmp_path):
    torch.manual_seed(0)
    model = MMIBForTokenClassification(tiny_config(text_only=True)).eval()
    assert not any("vision" in name or "discriminator" in name for name, _ in model.named_parameters())
    batch = make_batch()
    with torch.no_grad():
        outputs = model(**batch)
        without_images = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            word_index=batch["word_index"],
            labels=batch["labels"],
        )
        states = model.mmib.text_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        mean = model.mmib.text_variational_encoder.mean_encoder(states, states, batch["attention_mask"].bool())[0]
        word_states = torch.stack([mean[row, batch["word_index"][row].clamp(min=0)] for row in range(3)])
        expected_logits = model.classifier(word_states)
    assert torch.allclose(outputs.logits, expected_logits, atol=1e-5)
    assert torch.equal(outputs.logits, without_images.logits)
    assert outputs.kl_vision is None and outputs.alignment_loss is None
    assert outputs.loss.item() == pytest.approx(outputs.task_loss.item() + 0.1 * outputs.kl_text.item(), rel=1e-6)

    model.save_pretrained(tmp_path)
    reloaded = MMIBForTokenClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.text_only and reloaded.mmib.vision_model is None
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, outputs.logits)


# --- edge cases ------------------------------------------------------------------------------------------------------


def test_post_without_kept_words_gets_no_tags_and_leaves_the_rest_of_the_batch_alone(model):
    batch = make_batch()
    truncated = {key: value.clone() for key, value in batch.items()}
    truncated["word_index"][1] = -1  # every word of post 1 lies beyond max_length
    truncated["labels"][1] = -100
    with torch.no_grad():
        full = model(**batch)
        outputs = model(**truncated)
        rest = model(**{key: value[[0, 2]] for key, value in batch.items()})
        mask = batch["word_index"] >= 0
        per_post = model.crf.negative_log_likelihood(full.logits, batch["labels"], mask)
    assert outputs.predictions[1].tolist() == [-100] * 4
    assert torch.equal(outputs.predictions[[0, 2]], full.predictions[[0, 2]])
    assert torch.equal(outputs.predictions[[0, 2]], rest.predictions)
    # The loss is the mean over the two posts that kept words, as for a batch without post 1.
    assert outputs.task_loss.item() == pytest.approx((per_post[0] + per_post[2]).item() / 2, rel=1e-5)
    assert outputs.task_loss.item() == pytest.approx(rest.task_loss.item(), rel=1e-5)
    model.train()
    outputs = model(**truncated)
    outputs.loss.backward()
    assert torch.isfinite(outputs.loss)


def test_first_slot_pooling_uses_the_first_present_image_slot():
    torch.manual_seed(1)
    base = MMIBModel(tiny_config(alignment_pooling="first", num_negatives=1)).eval()
    for parameter in base.discriminator.parameters():
        parameter.data.normal_()  # a discriminator far from chance, so that the pooled slot shows in the loss
    text = torch.randn(3, 4, 32)
    text_mask = torch.ones(3, 4, dtype=torch.bool)
    vision = torch.randn(3, 3, 32)
    # Post 0: whole image; post 1: crops only (slot 0 masked); post 2: only the second crop.
    image_mask = torch.tensor([[1, 1, 0], [0, 1, 1], [0, 0, 1]]).bool()
    with torch.no_grad():
        loss = base._alignment_loss(text, text_mask, vision, image_mask)
        text_pooled = text[:, 0]
        vision_pooled = torch.stack([vision[0, 0], vision[1, 1], vision[2, 2]])
        positive = -F.logsigmoid(base.discriminator(text_pooled, vision_pooled)).mean()
        negative = -F.logsigmoid(-base.discriminator(text_pooled, vision_pooled.roll(1, 0))).mean()
        masked_slot_used = base._alignment_loss(text, text_mask, vision, torch.ones(3, 3, dtype=torch.bool))
    assert loss.item() == pytest.approx((positive + negative).item(), rel=1e-5)
    assert loss.item() != pytest.approx(masked_slot_used.item(), rel=1e-3)
