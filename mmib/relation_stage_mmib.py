"""
The NER -> RE stage of prediction: the ordered pairs of the entities an NER model finds in a post, classified by a
relation checkpoint. Each post's images go through the relation model's vision tower once (not once per pair), and
the pairs run in batches of similar length.

Typed pairs: a relation checkpoint whose config records `relation_type_signatures` (the (head type, tail type) pairs
that carry a relation in its training data) has only the pairs whose predicted types match one of them classified;
the others are the no-relation label without a forward pass, counted in the row's `pairs_skipped_by_type` (never
listed in `relations`, even with `keep_none`: they have no score). `all_pairs=True`, or a checkpoint without the
record, classifies every pair. Each pair of an MMIB relation model is a forward pass of its own (the entity markers
are part of the text), so this is where NER -> RE spends its time.

Travels with checkpoints as remote code: it imports only torch, transformers, PIL, the standard library and its
`*_mmib.py` siblings.
"""

import dataclasses
import itertools
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager

import torch
from transformers import BatchFeature, PreTrainedModel, ProcessorMixin

from .image_loading_mmib import encode_post_images
from .posts_mmib import PreparedPost
from .re_encoding_mmib import normalize_entity_type

__all__ = ["RelationStage", "add_cached_features", "on_device"]

logger = logging.getLogger(__name__)


def add_cached_features(inputs: BatchFeature, posts: Sequence[PreparedPost], num_crops: int) -> BatchFeature:
    """
    Adds the posts' cached image features to processor `inputs` (made with `None` in the cached slots), as the
    model takes them: `image_features` `(B, 1 + num_crops, D)`, `image_feature_mask` `(B, 1 + num_crops)` (the
    cached slots) and `image_mask` extended to them; the model computes the other present slots from
    `pixel_values` in the same forward. Unchanged when nothing is cached.
    """
    vectors = [vector for post in posts for vector in post.cached_features.values()]
    if not vectors:
        return inputs
    features = torch.zeros(len(posts), 1 + num_crops, vectors[0].shape[-1])
    cached = torch.zeros(len(posts), 1 + num_crops, dtype=torch.bool)
    for index, post in enumerate(posts):
        for slot, vector in post.cached_features.items():
            if slot <= num_crops:
                features[index, slot], cached[index, slot] = vector, True
    inputs["image_features"], inputs["image_feature_mask"] = features, cached
    inputs["image_mask"] = inputs["image_mask"].bool() | cached
    return inputs


def on_device(inputs: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The model's inputs on its device (a pipeline hands them over as a plain mapping, not a `BatchFeature`)."""
    return {name: value.to(device) for name, value in inputs.items()}


class RelationStage:
    """
    Relations between the entities of NER results, by a relation (task `"re"`) checkpoint.

    Args:
        model ([`PreTrainedModel`]): an MMIB relation model, in eval mode.
        processor ([`ProcessorMixin`]): its processor.
        autocast (`Callable[[], AbstractContextManager]`): the predictor's precision context.
        batch_size (`int`): entity pairs per forward pass.
        max_pairs_per_post (`int`): pairs classified per post; further pairs are counted in `pairs_left_out`.
        keep_none (`bool`): keep relations labelled `none_label`.
        none_label (`str`): the no-relation label.
        type_signatures (`Collection[Sequence[str]]`, *optional*): the (head type, tail type) pairs that may carry
            a relation (the model config's `relation_type_signatures`); pairs of other predicted types are skipped.
            `None` classifies every pair.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        autocast: Callable[[], AbstractContextManager],
        batch_size: int,
        max_pairs_per_post: int,
        keep_none: bool,
        none_label: str,
        type_signatures: Collection[Sequence[str]] | None = None,
    ):
        self.model = model
        self.processor = processor
        self.autocast = autocast
        self.batch_size = batch_size
        self.max_pairs_per_post = max_pairs_per_post
        self.keep_none = keep_none
        self.none_label = none_label
        self.type_signatures = None
        if type_signatures is not None:
            self.type_signatures = {tuple(normalize_entity_type(name) for name in pair) for pair in type_signatures}

    def warn_unknown_types(self, entity_types: Iterable[str]) -> None:
        """Warns about NER entity types that no type signature names: every pair with one of them is skipped."""
        if self.type_signatures is None:
            return
        known = {name for pair in self.type_signatures for name in pair}
        unknown = sorted({name for name in entity_types if normalize_entity_type(name) not in known})
        if unknown:
            logger.warning(
                "The relation model's type signatures name no entity of type %s: pairs with such an entity are not "
                "classified (counted in pairs_skipped_by_type; all_pairs=True or --all_pairs classifies them).",
                ", ".join(unknown),
            )

    def typed_pairs(self, entities: Sequence[Mapping]) -> tuple[list[tuple[int, int]], int]:
        """The ordered (head, tail) index pairs of `entities` to classify, and the number skipped by type."""
        ordered = list(itertools.permutations(range(len(entities)), 2))
        if self.type_signatures is None:
            return ordered, 0
        types = [normalize_entity_type(entity["type"]) for entity in entities]
        kept = [(head, tail) for head, tail in ordered if (types[head], types[tail]) in self.type_signatures]
        return kept, len(ordered) - len(kept)

    def classify_pairs(self, pairs: list[tuple[PreparedPost, tuple[int, int], tuple[int, int]]]) -> list[dict]:
        """
        `{"label", "score"}` (or `{"error"}`) per (post, head span, tail span), in `pairs` order. Every pair is its
        own forward (the entity markers are part of its text), so the pairs run in batches of similar length (sorted
        by word count) to compute little padding.
        """
        order = sorted(range(len(pairs)), key=lambda index: len(pairs[index][0].words))
        labels = [None] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            indices = order[start : start + self.batch_size]
            chunk = [pairs[index] for index in indices]
            try:
                chunk_labels = self._classify_chunk(chunk)
            except ValueError:
                chunk_labels = []
                for pair in chunk:
                    try:
                        chunk_labels += self._classify_chunk([pair])
                    except ValueError as error:
                        chunk_labels.append({"error": str(error)})
            for index, label in zip(indices, chunk_labels):
                labels[index] = label
        return labels

    def _classify_chunk(self, chunk) -> list[dict]:
        inputs = self.processor(
            [post.words for post, _, _ in chunk],
            images=[post.image for post, _, _ in chunk],
            crops=[post.crops for post, _, _ in chunk],
            head_spans=[head for _, head, _ in chunk],
            tail_spans=[tail for _, _, tail in chunk],
        )
        inputs = add_cached_features(inputs, [post for post, _, _ in chunk], self.processor.num_crops)
        with self.autocast():
            logits = self.model(**on_device(inputs, self.model.device)).logits
        return self.processor.post_process_relation_classification(logits.float(), self.model.config.id2label)

    def with_image_features(self, posts: list[PreparedPost]) -> list[PreparedPost]:
        """
        `posts` with every image and crop replaced by the relation model's pooled tower features (as if cached), so
        that each post's images go through its image processor and tower once, not once per entity pair. Posts
        without decoded images are returned as they are; the originals are not changed.
        """
        num_crops = self.processor.num_crops
        with_pixels = [post for post in posts if post.image is not None or any(c is not None for c in post.crops)]
        views = {}
        for start in range(0, len(with_pixels), self.batch_size):
            chunk = with_pixels[start : start + self.batch_size]
            pixel_values, image_mask = encode_post_images(
                self.processor.image_processor,
                [post.image for post in chunk],
                [post.crops for post in chunk],
                num_crops,
            )
            with self.autocast():
                pixels = pixel_values[image_mask].to(self.model.device, self.model.dtype)
                features = self.model.mmib.get_image_features(pixels).float().cpu()
            rows = iter(features)
            for index, post in enumerate(chunk):
                cached = {slot: vector for slot, vector in post.cached_features.items() if slot <= num_crops}
                cached |= {slot: next(rows) for slot in range(1 + num_crops) if image_mask[index, slot]}
                views[id(post)] = dataclasses.replace(
                    post, image=None, crops=[None] * len(post.crops), cached_features=cached
                )
        return [views.get(id(post), post) for post in posts]

    def add_relations(self, posts: list[PreparedPost], results: list[dict]) -> None:
        """Adds `relations` (and the counts `pairs_skipped_by_type`, `pairs_left_out`) to NER `results` of `posts`."""
        chosen = {}
        for index, result in enumerate(results):
            ordered, skipped = self.typed_pairs(result["entities"])
            if skipped:
                result["pairs_skipped_by_type"] = skipped
            if len(ordered) > self.max_pairs_per_post:
                result["pairs_left_out"] = len(ordered) - self.max_pairs_per_post
            if ordered:
                chosen[index] = ordered[: self.max_pairs_per_post]
            result["relations"] = []
        # Only posts with a pair to classify have their images encoded.
        views = dict(zip(chosen, self.with_image_features([posts[index] for index in chosen])))
        pairs, owners = [], []
        for index, ordered in chosen.items():
            entities = results[index]["entities"]
            for head, tail in ordered:
                spans = [(entities[i]["word_start"], entities[i]["word_end"]) for i in (head, tail)]
                pairs.append((views[index], *spans))
                owners.append((index, head, tail))
        for (index, head, tail), relation in zip(owners, self.classify_pairs(pairs)):
            if "error" in relation:
                results[index].setdefault("relation_errors", []).append({"head": head, "tail": tail, **relation})
            elif self.keep_none or relation["label"] != self.none_label:
                results[index]["relations"].append({"head": head, "tail": tail, **relation})
