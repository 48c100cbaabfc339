"""The conventions every transformers model honours, checked on MMIB in the spirit of `ModelTesterMixin`.

Call order, `return_dict`, hidden states and attention maps, attention kernels (eager vs sdpa), gradient
checkpointing, `_no_split_modules`, half precision on the processor's output, save/load (also of a checkpoint saved
by an earlier version), `auto_map`, `classifier_dropout`, embedding resizing, a training step and `torch.compile`.
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import make_image, make_image_processor, make_tokenizer, tiny_config, tiny_text_config
from mmib import (
    MMIBForRelationClassification,
    MMIBForTokenClassification,
    MMIBProcessor,
)
from model_batches import HEADS, NUM_SLOTS, RELATIONS, build, make_batch, relation_batch


def no_dropout_config(**kwargs):
    text_config = tiny_text_config()
    text_config.hidden_dropout_prob = text_config.attention_probs_dropout_prob = 0.0
    return tiny_config(text_config=text_config, apenc_dropout=0.0, **kwargs)


def test_bert_call_order_positional_equals_keyword():
    model, batch = build("ner")
    with torch.no_grad():
        keyword = model(**batch)
        positional = model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            batch["word_index"],
            batch["pixel_values"],
            None,
            batch["image_mask"],
            batch["labels"],
        )
        base_positional = model.mmib(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        base_keyword = model.mmib(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.equal(keyword.logits, positional.logits) and torch.equal(keyword.loss, positional.loss)
    assert torch.equal(base_positional.last_hidden_state, base_keyword.last_hidden_state)
    # The BERT habit `model(input_ids, attention_mask)` must not silently use the mask as word positions.
    with pytest.raises(ValueError, match="word_index is required"):
        model(batch["input_ids"], batch["attention_mask"])
    relation, relation_inputs = build("re")
    with pytest.raises(ValueError, match="entity_positions is required"):
        relation(relation_inputs["input_ids"], relation_inputs["attention_mask"])


@pytest.mark.parametrize("task", ["ner", "re"])
def test_return_dict_false_gives_the_tuple_of_the_fields(task):
    model, batch = build(task)
    with torch.no_grad():
        as_dict = model(**batch)
        as_tuple = model(**batch, return_dict=False)
        model.config.return_dict = False
        from_config = model(**batch)
    expected = as_dict.to_tuple()
    assert isinstance(as_tuple, tuple) and isinstance(from_config, tuple)
    assert len(as_tuple) == len(expected) == len(from_config)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(as_tuple, expected, from_config))
    # BERT's positions: (loss, logits, ...) with labels, logits first without.
    assert torch.equal(as_tuple[0], as_dict.loss) and torch.equal(as_tuple[1], as_dict.logits)
    with torch.no_grad():
        without_labels = model(**{**batch, "labels": None}, return_dict=False)
    assert torch.equal(without_labels[0], as_dict.logits)


def test_hidden_states_are_the_tower_layers_then_the_latents_and_the_fused_states():
    model, batch = build("ner")
    with torch.no_grad():
        outputs = model.mmib(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            image_mask=batch["image_mask"],
            output_hidden_states=True,
        )
        tower = model.mmib.text_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
        head = model(**batch, output_hidden_states=True)
        plain = model(**batch)
    num_layers = model.config.text_config.num_hidden_layers
    assert len(outputs.hidden_states) == num_layers + 1 + 2
    for mine, theirs in zip(outputs.hidden_states, tower.hidden_states):
        assert torch.equal(mine, theirs)
    assert torch.equal(outputs.hidden_states[-2], outputs.text_latent_mean)  # eval mode: Z^T = mean
    assert torch.equal(outputs.hidden_states[-1], outputs.last_hidden_state)
    assert all(torch.equal(a, b) for a, b in zip(head.hidden_states, outputs.hidden_states))
    assert plain.hidden_states is None and plain.attentions is None
    assert torch.equal(head.logits, plain.logits)


def test_attention_maps_are_the_apenc_weights_and_respect_the_masks():
    model, batch = build("ner")
    with torch.no_grad():
        outputs = model(**batch, output_attentions=True)
        plain = model(**batch)
    assert torch.allclose(outputs.logits, plain.logits, atol=1e-6)
    text_mean, text_logvar, vision_mean, vision_logvar, vision_to_text, text_to_vision = outputs.attentions
    heads = model.config.apenc_num_attention_heads
    assert text_mean.shape == text_logvar.shape == (3, heads, 8, 8)
    assert vision_mean.shape == vision_logvar.shape == (3, heads, NUM_SLOTS, NUM_SLOTS)
    assert vision_to_text.shape == (3, heads, NUM_SLOTS, 8) and text_to_vision.shape == (3, heads, 8, NUM_SLOTS)
    text_keys, image_keys = batch["attention_mask"].bool(), batch["image_mask"]
    for weights, keys in [(text_mean, text_keys), (vision_to_text, text_keys), (text_to_vision, image_keys)]:
        has_key = keys.any(dim=1)
        # Rows sum to one over present keys, masked keys get no weight, a post without keys gets all zeros.
        assert torch.allclose(weights[has_key].sum(-1), torch.ones_like(weights[has_key].sum(-1)), atol=1e-5)
        assert (weights.masked_select(~keys[:, None, None, :].expand_as(weights)) == 0).all()
    assert (text_to_vision[1] == 0).all()  # post 1 has no image

    # Every map that involves the image slots equals softmax(QK^T / sqrt(d_h)) recomputed from its layer's own
    # inputs, with no weight on an absent slot's key: the vision self-attention maps (mean and log-variance) and
    # the two cross-modal maps.
    mmib = model.mmib
    layers = {
        "vision_mean": (mmib.vision_variational_encoder.mean_encoder, vision_mean),
        "vision_logvar": (mmib.vision_variational_encoder.logvar_encoder, vision_logvar),
        "vision_to_text": (mmib.vision_to_text_encoder, vision_to_text),
        "text_to_vision": (mmib.text_to_vision_encoder, text_to_vision),
    }
    captured = {}
    hooks = [
        layer.register_forward_hook(lambda module, args, output, name=name: captured.update({name: args}))
        for name, (layer, _) in layers.items()
    ]
    with torch.no_grad():
        model(**batch, output_attentions=True)
    for hook in hooks:
        hook.remove()
    for name, (layer, weights) in layers.items():
        queries, keys, key_mask = captured[name]
        attention = layer.attention
        with torch.no_grad():
            query_heads = attention._split_heads(attention.q_proj(queries))
            key_heads = attention._split_heads(attention.k_proj(keys))
            scores = query_heads @ key_heads.transpose(-1, -2) / attention.head_dim**0.5
        expected_keys = text_keys if name == "vision_to_text" else image_keys
        assert torch.equal(key_mask, expected_keys), name
        for post in range(3):
            present = expected_keys[post]
            expected = torch.zeros_like(weights[post])
            if present.any():
                expected[..., present] = scores[post][..., present].softmax(-1)
            torch.testing.assert_close(weights[post], expected, atol=1e-6, rtol=0.0, msg=f"{name}, post {post}")


def test_ablations_leave_their_attention_maps_out():
    torch.manual_seed(0)
    batch = make_batch()
    counts = {}
    for name, switches in {
        "full": {},
        "no_refinement": {"use_refinement_regularizer": False},
        "text_only": {"text_only": True},
    }.items():
        model = MMIBForTokenClassification(tiny_config(**switches)).eval()
        with torch.no_grad():
            outputs = model(**batch, output_attentions=True, output_hidden_states=True)
        counts[name] = (len(outputs.attentions), len(outputs.hidden_states))
    layers = tiny_text_config().num_hidden_layers + 1
    assert counts == {"full": (6, layers + 2), "no_refinement": (4, layers + 2), "text_only": (2, layers + 1)}


@pytest.mark.parametrize("task", ["ner", "re"])
def test_eager_and_sdpa_give_the_same_outputs(task, tmp_path, monkeypatch):
    model, batch = build(task)
    model.save_pretrained(tmp_path)
    model_class = HEADS[task][0]
    sdpa_calls = []
    original = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: sdpa_calls.append(1) or original(*a, **k))
    outputs, calls = {}, {}
    for implementation in ("eager", "sdpa"):
        loaded = model_class.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        assert loaded.config._attn_implementation == implementation
        assert loaded.mmib.text_model.config._attn_implementation == implementation
        sdpa_calls.clear()
        with torch.no_grad():
            outputs[implementation] = loaded(**batch)
        calls[implementation] = len(sdpa_calls)
    # eager: no SDPA call at all; sdpa: the 6 APEnc layers and the 1-layer text tower.
    assert calls == {"eager": 0, "sdpa": 7}
    difference = (outputs["eager"].logits - outputs["sdpa"].logits).abs().max().item()
    assert difference <= 1e-5, difference
    assert torch.allclose(outputs["eager"].loss, outputs["sdpa"].loss, atol=1e-5)
    from_config = model_class._from_config(model.config, attn_implementation="eager")
    assert from_config.config._attn_implementation == "eager"


def gradients(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # same dropout masks and reparameterisation noise in both runs
    model(**batch).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = MMIBForTokenClassification(tiny_config()).train()
    batch = make_batch()
    reference = gradients(model, batch)
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    checkpointed_layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    names = {type(m).__name__ for m in checkpointed_layers}
    assert {"MMIBAttentivePropagationEncoder", "BertLayer"} <= names
    calls = []
    for layer in checkpointed_layers:
        original = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _f=original, **k: calls.append(1) or _f(*a, **k)
    checkpointed = gradients(model, batch)
    assert len(calls) == 6 + 1  # every APEnc layer and the text layer went through the checkpoint
    assert reference.keys() == checkpointed.keys() and len(reference) > 0
    difference = max((reference[name] - checkpointed[name]).abs().max().item() for name in reference)
    assert difference <= 1e-6, difference
    model.gradient_checkpointing_disable()
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_no_split_modules_name_mmib_layers_and_the_towers():
    model, _ = build("ner")
    assert {"MMIBAttentivePropagationEncoder", "MMIBDiscriminator", "MMIBCRF"} <= set(model._no_split_modules)
    assert {"BertLayer", "ResNetConvLayer"} <= set(model._no_split_modules)
    present = {type(module).__name__ for module in model.modules()}
    assert set(model._no_split_modules) <= present


def test_bf16_model_runs_on_the_processor_output():
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="ner", num_crops=2)
    inputs = processor(
        [["john", "smith", "visits", "london"], ["i", "love", "paris"]],
        images=[make_image(0), None],
        crops=[[make_image(1)], []],
        labels=[[1, 2, 0, 3], [0, 0, 3]],
    )
    assert inputs["pixel_values"].dtype == torch.float32
    torch.manual_seed(0)
    model = MMIBForTokenClassification(tiny_config()).eval()
    with torch.no_grad():
        reference = model(**inputs)
        model.to(torch.bfloat16)
        outputs = model(**inputs)
    assert outputs.logits.dtype == torch.bfloat16
    for field in ("loss", "task_loss", "kl_text", "kl_vision", "alignment_loss"):
        assert outputs[field].dtype == torch.float32, field
        assert torch.isfinite(outputs[field]), field
    assert torch.allclose(outputs.logits.float(), reference.logits, atol=0.1)
    assert outputs.kl_text.item() == pytest.approx(reference.kl_text.item(), rel=0.1)


def test_classifier_dropout_is_the_heads_own():
    torch.manual_seed(0)
    default = MMIBForTokenClassification(tiny_config(apenc_dropout=0.2))
    assert default.dropout.p == 0.2
    # With every other dropout off and the head's at 1, training logits are the classifier bias alone.
    model = MMIBForRelationClassification(no_dropout_config(classifier_dropout=1.0, id2label=RELATIONS)).train()
    logits = model(**relation_batch()).logits
    assert torch.allclose(logits, model.classifier.bias.expand_as(logits))
    model.eval()
    assert not torch.allclose(model(**relation_batch()).logits, model.classifier.bias.expand_as(logits))


def test_resize_token_embeddings_keeps_old_rows_and_round_trips(tmp_path):
    model, batch = build("ner")
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(old.shape[0] + 3)
    new = model.get_input_embeddings().weight
    assert new.shape == (old.shape[0] + 3, old.shape[1]) and torch.equal(new[: old.shape[0]], old)
    assert model.config.text_config.vocab_size == old.shape[0] + 3
    batch["input_ids"][0, 1] = old.shape[0] + 2  # a new token id now works
    with torch.no_grad():
        logits = model(**batch).logits
    model.save_pretrained(tmp_path)
    reloaded = MMIBForTokenClassification.from_pretrained(tmp_path).eval()
    assert reloaded.get_input_embeddings().num_embeddings == old.shape[0] + 3
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, logits)


@pytest.mark.parametrize("task", ["ner", "re"])
def test_a_few_training_steps_lower_the_loss_on_a_fixed_batch(task):
    model, batch = build(task)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    frozen = {name: p.detach().clone() for name, p in model.mmib.vision_model.named_parameters()}
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        final = model(**batch).task_loss.item()
    assert final < losses[0] / 2, losses
    assert all(torch.equal(p, frozen[name]) for name, p in model.mmib.vision_model.named_parameters())


@pytest.mark.slow
def test_torch_compile_gives_the_same_logits():
    """`aot_eager`: the graph capture of inductor, without its C++ code generation (too slow for 2 shared cores)."""
    model, batch = build("ner")
    compiled = torch.compile(model, backend="aot_eager", dynamic=False)
    with torch.no_grad():
        expected = model(**batch)
        outputs = compiled(**batch)
    assert torch.allclose(outputs.logits, expected.logits, atol=1e-5)
    assert torch.equal(outputs.predictions, expected.predictions)
