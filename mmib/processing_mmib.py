"""
Processor class for MMIB: pre-split tweet words + whole image + object crops.

This file travels to the Hub as remote code: it imports only torch, transformers, PIL and the standard library.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from transformers import BaseImageProcessor, BatchFeature, PreTrainedTokenizerBase, ProcessorMixin

ImageLike = Image.Image | str | os.PathLike | None

TASKS = ("ner", "re")
ENTITY_MARKERS = ("<s>", "</s>", "<o>", "</o>")
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class MMIBProcessor(ProcessorMixin):
    r"""
    Constructs an MMIB processor that turns pre-split posts, their images and object crops into model inputs for
    multimodal named entity recognition (`task="ner"`) or multimodal relation extraction (`task="re"`).

    The text goes through the tokenizer word by word (`is_split_into_words=True`), the whole image and up to
    `num_crops` crops of every post go through the image processor in one call per batch.

    Args:
        image_processor ([`BaseImageProcessor`]):
            The image processor, e.g. the standard ResNet one ([`ConvNextImageProcessor`] with
            `size={"shortest_edge": 224}` and `crop_pct=0.875`: short side to 256, center crop 224).
        tokenizer ([`PreTrainedTokenizerBase`]):
            The tokenizer of the text encoder. For `task="re"` the entity markers `<s> </s> <o> </o>` are added to
            it as special tokens if absent, so the vocabulary grows by up to 4 (resize the text embeddings).
        task (`str`, *optional*, defaults to `"ner"`):
            `"ner"` (word-level tagging) or `"re"` (relation between a head and a tail span).
        num_crops (`int`, *optional*, defaults to 4):
            Number of object-crop slots per post. Posts with fewer crops get zero-filled, masked slots; crops
            beyond `num_crops` are dropped (the first `num_crops` are kept).
        max_length (`int`, *optional*, defaults to 128):
            Maximum number of tokens per post, special tokens and entity markers included.
    """

    # transformers 5.x infers the parts from the `__init__` parameter names; this list names the same parts.
    attributes = ["image_processor", "tokenizer"]

    def __init__(
        self,
        image_processor: BaseImageProcessor,
        tokenizer: PreTrainedTokenizerBase,
        task: str = "ner",
        num_crops: int = 4,
        max_length: int = 128,
    ):
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}: expected one of {TASKS}.")
        if not isinstance(num_crops, int) or num_crops < 0:
            raise ValueError(f"num_crops must be a non-negative integer, got {num_crops!r}.")
        super().__init__(image_processor, tokenizer)
        self.task = task
        self.num_crops = num_crops
        self.max_length = max_length

        if task == "re":
            self._add_entity_markers()
        num_fixed_tokens = self.tokenizer.num_special_tokens_to_add(pair=False)
        if task == "re":
            num_fixed_tokens += len(ENTITY_MARKERS)
        if not isinstance(max_length, int) or max_length <= num_fixed_tokens:
            raise ValueError(
                f"max_length must be an integer larger than the {num_fixed_tokens} special tokens and markers every "
                f"post needs, got {max_length!r}."
            )

    def _add_entity_markers(self) -> None:
        for attribute in NAMED_SPECIAL_TOKENS:
            token = getattr(self.tokenizer, attribute, None)
            if token is not None and str(token) in ENTITY_MARKERS:
                raise ValueError(
                    f"The tokenizer's {attribute} is {str(token)!r}, which is also an MMIB entity marker "
                    f"{ENTITY_MARKERS}; task='re' needs a tokenizer whose own special tokens differ from the markers."
                )
        vocab = self.tokenizer.get_vocab()
        missing = [marker for marker in ENTITY_MARKERS if marker not in vocab]
        if missing:
            self.tokenizer.add_tokens(missing, special_tokens=True)

    @property
    def model_input_names(self) -> list[str]:
        """The keys of the model inputs returned by `__call__` (labels excluded)."""
        task_names = ["word_index"] if self.task == "ner" else ["entity_positions"]
        return list(self.tokenizer.model_input_names) + task_names + ["pixel_values", "image_mask"]

    def __call__(
        self,
        words: Sequence[str] | Sequence[Sequence[str]],
        images: ImageLike | Sequence[ImageLike] = None,
        crops: Sequence[ImageLike] | Sequence[Sequence[ImageLike] | None] | None = None,
        labels: Sequence[int] | Sequence[Sequence[int]] | int | None = None,
        head_spans: Sequence[int] | Sequence[Sequence[int]] | None = None,
        tail_spans: Sequence[int] | Sequence[Sequence[int]] | None = None,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        r"""
        Prepares one post or a batch of posts for the model.

        A single post is given as `list[str]` words with per-post values for the other arguments (one image, a list
        of crops, a list of labels, one span); a batch as `list[list[str]]` with one entry per post everywhere. The
        output always has a batch dimension.

        Words that the tokenizer turns into zero sub-words (U+FE0F, U+200B, U+200D, U+00A0, ...) are replaced by
        `tokenizer.unk_token`, so every word keeps a position and gets a prediction.

        Truncation keeps whole words. NER: words are kept from the left while their sub-words fit in `max_length`;
        the remaining words are left out of `word_index` and `labels` (`post_process_token_classification` tags them
        `O`, since it compares the predictions with the words). RE:
        words are dropped from the right end, then from the left end, never from the stretch that runs from the first
        to the last marked entity; if that stretch does not fit, a `ValueError` names the post.

        Args:
            words (`list[str]` or `list[list[str]]`):
                The words of one post, or of a batch of posts.
            images (`PIL.Image.Image`, `str`, `os.PathLike` or `None`, or a list of those, one per post):
                Whole image of each post, as a PIL image or an image file path; `None` means no image (its slot is
                zero and masked). Images are converted to RGB.
            crops (`list` of images, or a list of such lists (or `None`), one per post, *optional*):
                Object crops of each post, same types as `images`. Only the first `num_crops` are used.
            labels (*optional*):
                NER: word-level label ids, one per word (`list[int]` per post). RE: one relation id (`int`) per post.
            head_spans (`(start, end)` or a list of those, one per post, *optional*):
                RE only: word offsets of the head entity, `end` exclusive.
            tail_spans (`(start, end)` or a list of those, one per post, *optional*):
                RE only: word offsets of the tail entity, `end` exclusive. Must not overlap the head span.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                `"pt"` for torch tensors or `"np"` for numpy arrays.

        Returns:
            [`BatchFeature`] with, for a batch of B posts, L tokens, W kept words and m = `num_crops`:

            - **input_ids** `(B, L)` long, **attention_mask** `(B, L)` long, and **token_type_ids** `(B, L)` long
              if the tokenizer makes them.
            - NER: **word_index** `(B, W)` long, position of the first sub-word of each kept word, padded with -1;
              **labels** `(B, W)` long, padded with -100 (if `labels` given).
            - RE: **entity_positions** `(B, 2, 2)` long, `[[pos of <s>, pos of </s>], [pos of <o>, pos of </o>]]`;
              **labels** `(B,)` long (if `labels` given).
            - **pixel_values** `(B, 1 + m, 3, H, W)` float, slot 0 is the whole image, slots 1..m the crops, zeros
              where absent; left out when no post of the batch has any image or crop (text-only batch).
            - **image_mask** `(B, 1 + m)` bool, `True` where an image is present.

        Raises:
            ValueError: empty post, labels of the wrong length, span out of range or overlapping spans, entities
                that do not fit in `max_length`, arguments that do not match the task, corrupt image file.
            FileNotFoundError: an image or crop path that does not exist.
            TypeError: words not pre-split into lists of `str`, an image that is not a PIL image, a path or `None`.
        """
        is_single = (
            isinstance(words, Sequence)
            and not isinstance(words, str)
            and (len(words) == 0 or isinstance(words[0], str))
        )
        if is_single:
            words = [words]
            images = [images]
            crops = [crops]
            labels = None if labels is None else [labels]
            head_spans = None if head_spans is None else [head_spans]
            tail_spans = None if tail_spans is None else [tail_spans]
        batch_words = self._check_words(words)
        batch_size = len(batch_words)
        images = self._per_post(images, "images", batch_size)
        crops = self._per_post(crops, "crops", batch_size)

        if self.task == "ner":
            if head_spans is not None or tail_spans is not None:
                raise ValueError("head_spans and tail_spans are only used with task='re'; this processor does 'ner'.")
            labels = self._per_post(labels, "labels", batch_size)
            text_inputs = self._encode_ner(batch_words, labels)
        else:
            if head_spans is None or tail_spans is None:
                raise ValueError("task='re' needs both head_spans and tail_spans.")
            head_spans = self._per_post(head_spans, "head_spans", batch_size)
            tail_spans = self._per_post(tail_spans, "tail_spans", batch_size)
            labels = self._per_post(labels, "labels", batch_size)
            text_inputs = self._encode_re(batch_words, head_spans, tail_spans, labels)

        pixel_values, image_mask = self._encode_images(images, crops)
        image_inputs = (
            {"image_mask": image_mask}
            if pixel_values is None
            else {
                "pixel_values": pixel_values,
                "image_mask": image_mask,
            }
        )
        return BatchFeature({**text_inputs, **image_inputs}, tensor_type=return_tensors)

    @staticmethod
    def _check_words(words: Any) -> list[list[str]]:
        if isinstance(words, str) or not isinstance(words, Sequence):
            raise TypeError(f"words must be a list of words or a list of such lists, got {type(words).__name__}.")
        batch_words = []
        for index, post in enumerate(words):
            if isinstance(post, str) or not isinstance(post, Sequence):
                raise TypeError(f"words[{index}] (post {index}) must be a list of words, got {type(post).__name__}.")
            if len(post) == 0:
                raise ValueError(f"words[{index}] (post {index}) is empty: every post needs at least one word.")
            for position, word in enumerate(post):
                if not isinstance(word, str):
                    raise TypeError(
                        f"words[{index}][{position}] (post {index}) must be a str, got {type(word).__name__}."
                    )
            batch_words.append(list(post))
        return batch_words

    @staticmethod
    def _per_post(values: Any, field: str, batch_size: int) -> list[Any]:
        if values is None:
            return [None] * batch_size
        if isinstance(values, str) or not isinstance(values, Sequence | torch.Tensor):
            raise TypeError(f"{field} must have one entry per post, got {type(values).__name__}.")
        if len(values) != batch_size:
            raise ValueError(f"{field} has {len(values)} entries but there are {batch_size} posts.")
        return list(values)

    @staticmethod
    def _check_all_or_none(labels: list[Any]) -> None:
        given = [label is not None for label in labels]
        if any(given) and not all(given):
            missing = given.index(False)
            raise ValueError(f"labels[{missing}] (post {missing}) is None: give labels for every post or for none.")

    def _subword_counts(self, batch_words: list[list[str]]) -> list[list[int]]:
        encoding = self.tokenizer(batch_words, is_split_into_words=True, add_special_tokens=False)
        batch_counts = []
        for index, post in enumerate(batch_words):
            counts = [0] * len(post)
            for word_id in encoding.word_ids(index):
                if word_id is not None:
                    counts[word_id] += 1
            batch_counts.append(counts)
        return batch_counts

    def _tokenize(self, batch_words: list[list[str]]) -> tuple[list[list[str]], list[list[int]]]:
        """Replaces vanishing words by the unk token and returns the words with their sub-word counts."""
        batch_counts = self._subword_counts(batch_words)
        unk_token = str(self.tokenizer.unk_token)
        replaced = []
        for post, counts in zip(batch_words, batch_counts):
            replaced.append([unk_token if count == 0 else word for word, count in zip(post, counts)])
            counts[:] = [max(count, 1) for count in counts]
        return replaced, batch_counts

    def _first_token_positions(self, batch_words: list[list[str]]) -> tuple[dict[str, Any], list[list[int]]]:
        encoding = self.tokenizer(batch_words, is_split_into_words=True, padding=True)
        batch_positions = []
        for index, post in enumerate(batch_words):
            positions = [-1] * len(post)
            for position, word_id in enumerate(encoding.word_ids(index)):
                if word_id is not None and positions[word_id] == -1:
                    positions[word_id] = position
            batch_positions.append(positions)
        text_inputs = {
            name: torch.tensor(encoding[name], dtype=torch.long)
            for name in self.tokenizer.model_input_names
            if name in encoding
        }
        return text_inputs, batch_positions

    def _encode_ner(self, batch_words: list[list[str]], labels: list[Any]) -> dict[str, torch.Tensor]:
        for index, (post, post_labels) in enumerate(zip(batch_words, labels)):
            if post_labels is not None and len(post_labels) != len(post):
                raise ValueError(
                    f"labels[{index}] has {len(post_labels)} entries but post {index} has {len(post)} words."
                )
        self._check_all_or_none(labels)

        batch_words, batch_counts = self._tokenize(batch_words)
        budget = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        kept_words = []
        for post, counts in zip(batch_words, batch_counts):
            num_kept, used = 0, 0
            while num_kept < len(post) and used + counts[num_kept] <= budget:
                used += counts[num_kept]
                num_kept += 1
            kept_words.append(post[:num_kept])

        text_inputs, batch_positions = self._first_token_positions(kept_words)
        num_words = max(len(post) for post in kept_words)
        word_index = torch.full((len(kept_words), num_words), -1, dtype=torch.long)
        for index, positions in enumerate(batch_positions):
            word_index[index, : len(positions)] = torch.tensor(positions, dtype=torch.long)
        text_inputs["word_index"] = word_index
        if labels[0] is not None:
            label_tensor = torch.full((len(kept_words), num_words), -100, dtype=torch.long)
            for index, (kept, post_labels) in enumerate(zip(kept_words, labels)):
                label_tensor[index, : len(kept)] = torch.tensor(
                    [int(label) for label in post_labels[: len(kept)]], dtype=torch.long
                )
            text_inputs["labels"] = label_tensor
        return text_inputs

    @staticmethod
    def _check_span(span: Any, field: str, index: int, num_words: int) -> tuple[int, int]:
        if isinstance(span, torch.Tensor):
            span = span.tolist()
        if not isinstance(span, Sequence) or len(span) != 2:
            raise ValueError(f"{field}[{index}] (post {index}) must be a (start, end) pair, got {span!r}.")
        start, end = int(span[0]), int(span[1])
        if not 0 <= start < end <= num_words:
            raise ValueError(
                f"{field}[{index}] = {(start, end)} is out of range for post {index} with {num_words} words "
                f"(need 0 <= start < end <= {num_words}, end exclusive)."
            )
        return start, end

    def _encode_re(
        self,
        batch_words: list[list[str]],
        head_spans: list[Any],
        tail_spans: list[Any],
        labels: list[Any],
    ) -> dict[str, torch.Tensor]:
        spans = []
        for index, post in enumerate(batch_words):
            head = self._check_span(head_spans[index], "head_spans", index, len(post))
            tail = self._check_span(tail_spans[index], "tail_spans", index, len(post))
            if head[0] < tail[1] and tail[0] < head[1]:
                raise ValueError(
                    f"head_spans[{index}] = {head} and tail_spans[{index}] = {tail} overlap (post {index})."
                )
            spans.append((head, tail))
        self._check_all_or_none(labels)

        batch_words, batch_counts = self._tokenize(batch_words)
        fixed = self.tokenizer.num_special_tokens_to_add(pair=False) + len(ENTITY_MARKERS)
        marked_words, marker_word_indices = [], []
        for index, (post, counts, (head, tail)) in enumerate(zip(batch_words, batch_counts, spans)):
            first, last = min(head[0], tail[0]), max(head[1], tail[1])
            low, high = 0, len(post)
            total = fixed + sum(counts)
            while total > self.max_length:
                if high > last:
                    high -= 1
                    total -= counts[high]
                elif low < first:
                    total -= counts[low]
                    low += 1
                else:
                    raise ValueError(
                        f"Post {index}: the head and tail entities and the words between them need {total} tokens "
                        f"with special tokens and markers, more than max_length={self.max_length}."
                    )
            # Markers go around the spans, in word order: (offset, marker index in ENTITY_MARKERS).
            inserts = sorted(
                [(head[0], 0), (head[1], 1), (tail[0], 2), (tail[1], 3)],
                key=lambda item: (item[0], item[1] in (0, 2)),
            )
            marked, marker_indices = [], [0] * len(ENTITY_MARKERS)
            insert_position = 0
            for offset in range(low, high + 1):
                while insert_position < len(inserts) and inserts[insert_position][0] == offset:
                    marker = inserts[insert_position][1]
                    marker_indices[marker] = len(marked)
                    marked.append(ENTITY_MARKERS[marker])
                    insert_position += 1
                if offset < high:
                    marked.append(post[offset])
            marked_words.append(marked)
            marker_word_indices.append(marker_indices)

        text_inputs, batch_positions = self._first_token_positions(marked_words)
        text_inputs["entity_positions"] = torch.tensor(
            [
                [[positions[indices[0]], positions[indices[1]]], [positions[indices[2]], positions[indices[3]]]]
                for positions, indices in zip(batch_positions, marker_word_indices)
            ],
            dtype=torch.long,
        )
        if labels[0] is not None:
            text_inputs["labels"] = torch.tensor([int(label) for label in labels], dtype=torch.long)
        return text_inputs

    @staticmethod
    def _load_image(image: ImageLike, field: str, index: int) -> Image.Image | None:
        if image is None:
            return None
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        if isinstance(image, str | os.PathLike):
            path = os.fspath(image)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Image file not found: {path} ({field}, post {index}).")
            try:
                with Image.open(path) as opened:
                    return opened.convert("RGB")
            except (OSError, SyntaxError, ValueError) as error:
                raise ValueError(f"Cannot read image file {path} ({field}, post {index}): {error}") from error
        raise TypeError(
            f"{field} of post {index} must be a PIL.Image.Image, a file path or None, got {type(image).__name__}."
        )

    def _encode_images(self, images: list[Any], crops: list[Any]) -> tuple[torch.Tensor | None, torch.Tensor]:
        num_slots = 1 + self.num_crops
        present, slots = [], []
        for index, (image, post_crops) in enumerate(zip(images, crops)):
            loaded = self._load_image(image, "images", index)
            if loaded is not None:
                present.append(loaded)
                slots.append((index, 0))
            if post_crops is None:
                continue
            if isinstance(post_crops, str | os.PathLike | Image.Image) or not isinstance(post_crops, Sequence):
                raise TypeError(
                    f"crops[{index}] (post {index}) must be a list of crops, got {type(post_crops).__name__}."
                )
            for slot, crop in enumerate(post_crops[: self.num_crops], start=1):
                loaded = self._load_image(crop, f"crops[{index}][{slot - 1}]", index)
                if loaded is not None:
                    present.append(loaded)
                    slots.append((index, slot))

        image_mask = torch.zeros((len(images), num_slots), dtype=torch.bool)
        if not present:
            return None, image_mask
        processed = self.image_processor(images=present, return_tensors="pt")["pixel_values"]
        pixel_values = torch.zeros((len(images), num_slots, *processed.shape[1:]), dtype=processed.dtype)
        for (index, slot), values in zip(slots, processed):
            pixel_values[index, slot] = values
            image_mask[index, slot] = True
        return pixel_values, image_mask

    def post_process_token_classification(
        self,
        predictions: torch.Tensor | Sequence[Sequence[int]],
        words: Sequence[str] | Sequence[Sequence[str]],
        id2label: Mapping[int, str],
    ) -> list[dict[str, Any]]:
        r"""
        Turns word-level NER predictions into BIO tags and entity spans.

        Entities are chunked conlleval-style: `B-X` starts an entity, `I-X` continues an entity of type `X` and
        starts a new one after `O` or after a different type; every other tag (e.g. `O`) is outside.

        Args:
            predictions (`torch.Tensor` of shape `(B, W)` or `list[list[int]]`):
                Label ids per kept word of each post (e.g. CRF Viterbi paths), padded with -100. Posts cut by
                truncation have fewer predictions than words.
            words (`list[list[str]]` or `list[str]`):
                The words of each post, as given to `__call__` (one post may be given as `list[str]`).
            id2label (`dict[int, str]`):
                Label names, e.g. `model.config.id2label`.

        Returns:
            `list[dict]`, one per post: `{"tags": list[str], "entities": list[dict]}` with one tag per word
            (truncated words get `"O"`) and entities `{"text", "type", "start", "end"}` in word offsets, `end`
            exclusive, `text = " ".join(words[start:end])`.
        """
        if isinstance(predictions, torch.Tensor):
            predictions = predictions.tolist()
        if len(words) > 0 and isinstance(words[0], str):
            words = [words]
            if len(predictions) > 0 and not isinstance(predictions[0], Sequence):
                predictions = [predictions]
        if len(predictions) != len(words):
            raise ValueError(f"predictions has {len(predictions)} posts but words has {len(words)}.")

        results = []
        for index, (post_predictions, post) in enumerate(zip(predictions, words)):
            label_ids = [int(label_id) for label_id in post_predictions if int(label_id) != -100]
            if len(label_ids) > len(post):
                raise ValueError(
                    f"predictions[{index}] has {len(label_ids)} labels but post {index} has {len(post)} words."
                )
            tags = [id2label[label_id] for label_id in label_ids] + ["O"] * (len(post) - len(label_ids))
            results.append({"tags": tags, "entities": self._extract_entities(tags, post)})
        return results

    @staticmethod
    def _extract_entities(tags: list[str], words: Sequence[str]) -> list[dict[str, Any]]:
        entities = []
        current_type, start = None, 0
        for position, tag in enumerate([*tags, "O"]):
            prefix, _, entity_type = tag.partition("-")
            continues = prefix == "I" and entity_type == current_type
            if current_type is not None and not continues:
                entities.append(
                    {"text": " ".join(words[start:position]), "type": current_type, "start": start, "end": position}
                )
                current_type = None
            if prefix in ("B", "I") and entity_type and not continues:
                current_type, start = entity_type, position
        return entities

    def post_process_relation_classification(
        self, logits: torch.Tensor, id2label: Mapping[int, str]
    ) -> list[dict[str, Any]]:
        r"""
        Turns relation logits into a label and its softmax probability per post.

        Args:
            logits (`torch.Tensor` of shape `(B, num_relations)`, or `(num_relations,)` for one post):
                Relation scores, e.g. `outputs.logits`.
            id2label (`dict[int, str]`):
                Relation names, e.g. `model.config.id2label`.

        Returns:
            `list[dict]`, one per post: `{"label": str, "score": float}`.
        """
        logits = torch.as_tensor(logits, dtype=torch.float32)
        if logits.dim() == 1:
            logits = logits.unsqueeze(0)
        scores, label_ids = logits.softmax(dim=-1).max(dim=-1)
        return [
            {"label": id2label[int(label_id)], "score": float(score)} for score, label_id in zip(scores, label_ids)
        ]


MMIBProcessor.register_for_auto_class()

__all__ = ["MMIBProcessor"]
