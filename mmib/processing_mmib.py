"""
Processor class for MMIB: pre-split tweet words + whole image + object crops.

The work is split by responsibility into sibling files that travel with it as remote code: `text_encoding_mmib`
(shared word helpers), `ner_encoding_mmib`, `re_encoding_mmib` (entity markers), `image_loading_mmib` (the one image
loader) and `post_processing_mmib`. They import only torch, transformers, PIL and the standard library.
"""

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import BaseImageProcessor, BatchFeature, PreTrainedTokenizerBase, ProcessorMixin
from transformers.utils import cached_file

from .image_loading_mmib import ImageLike, encode_post_images
from .ner_encoding_mmib import encode_ner
from .post_processing_mmib import relation_classification_results, token_classification_results
from .re_encoding_mmib import ENTITY_MARKERS, encode_re, num_fixed_re_tokens, with_entity_markers
from .text_encoding_mmib import check_words

TASKS = ("ner", "re")


class MMIBProcessor(ProcessorMixin):
    r"""
    Constructs an MMIB processor that turns pre-split posts, their images and object crops into model inputs for
    multimodal named entity recognition (`task="ner"`) or multimodal relation extraction (`task="re"`).

    The text goes through the tokenizer word by word (`is_split_into_words=True`), the whole image and up to
    `num_crops` crops of every post go through the image processor in one call per batch.

    `num_crops` and `max_length` are saved in `processor_config.json` and are the values a checkpoint's data go
    through; `config.json` repeats `num_crops` because it sizes the model's image slots. Loading a processor from a
    folder whose `config.json` disagrees is refused (see [`check_processor_matches_config`]). To build a matching
    model and processor, use `mmib.build_model_and_processor`.

    Args:
        image_processor ([`BaseImageProcessor`]):
            The image processor, e.g. the standard ResNet one ([`ConvNextImageProcessor`] with
            `size={"shortest_edge": 224}` and `crop_pct=0.875`: short side to 256, center crop 224).
        tokenizer ([`PreTrainedTokenizerBase`]):
            The tokenizer of the text encoder. For `task="re"` the processor needs the entity markers
            `<s> </s> <o> </o>` as special tokens: if they are absent, it adds them to a copy of `tokenizer` (the
            caller's object is never changed), so `processor.tokenizer` may be larger by up to 4 tokens (resize the
            text embeddings to `len(processor.tokenizer)`).
        task (`str`, *optional*, defaults to `"ner"`):
            `"ner"` (word-level tagging) or `"re"` (relation between a head and a tail span).
        num_crops (`int`, *optional*, defaults to 4):
            Number of object-crop slots per post. Posts with fewer crops get zero-filled, masked slots; crops
            beyond `num_crops` are dropped (the first `num_crops` are kept).
        max_length (`int`, *optional*, defaults to 128):
            Maximum number of tokens per post, special tokens and entity markers included.
        object_extraction (`dict`, *optional*):
            The settings of the object extractor whose crops the model was trained on
            (`MMIBObjectExtractor.to_dict()`: detector id or path, revision, kind, query rule, thresholds,
            `num_crops`), saved in `processor_config.json`, so that prediction cuts the crops of a post that brings
            an image and no crops the same way (`MMIBPredictor`). `None`: crops came with the data, or none were used.
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
        object_extraction: dict[str, Any] | None = None,
    ):
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}: expected one of {TASKS}.")
        if not isinstance(num_crops, int) or num_crops < 0:
            raise ValueError(f"num_crops must be a non-negative integer, got {num_crops!r}.")
        if task == "re":
            tokenizer = with_entity_markers(tokenizer)
        super().__init__(image_processor, tokenizer)
        self.task = task
        self.num_crops = num_crops
        self.max_length = max_length
        if object_extraction is not None and not isinstance(object_extraction, dict):
            raise TypeError(f"object_extraction must be a dict of extractor settings, got {object_extraction!r}.")
        self.object_extraction = object_extraction

        num_fixed_tokens = (
            num_fixed_re_tokens(self.tokenizer)
            if task == "re"
            else self.tokenizer.num_special_tokens_to_add(pair=False)
        )
        if not isinstance(max_length, int) or max_length <= num_fixed_tokens:
            raise ValueError(
                f"max_length must be an integer larger than the {num_fixed_tokens} special tokens and markers every "
                f"post needs, got {max_length!r}."
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "MMIBProcessor":
        """
        Loads a saved processor like [`ProcessorMixin.from_pretrained`], then, when the same folder or repository
        holds an MMIB `config.json`, refuses a processor whose `num_crops` or `max_length` does not fit that model
        (see [`check_processor_matches_config`]).
        """
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        lookup = {
            name: kwargs[name]
            for name in ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
            if name in kwargs
        }
        config_file = cached_file(
            pretrained_model_name_or_path,
            "config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **lookup,
        )
        if config_file is not None:
            with open(config_file, encoding="utf-8") as handle:
                config = json.load(handle)
            if config.get("model_type") == "mmib":
                check_processor_matches_config(processor, config, source=str(pretrained_model_name_or_path))
        return processor

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
        `O` and counts them in `truncated_words`). A post whose first word alone does not fit keeps no word: its
        `word_index` row is all -1, a warning names it, and the rest of the batch is unaffected. RE: words are
        dropped from the right end, then from the left end, never from the stretch that runs from the first to the
        last marked entity; if that stretch does not fit, a `ValueError` names the post.

        Images follow the unreadable-file policy of `image_loading_mmib.load_image` with `on_unreadable="raise"`:
        a missing or undecodable file is an error naming it. To mask such files instead (as the training collator
        does), load them with `load_image(path, on_unreadable="mask")` and pass the PIL images or `None`.

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
                RE only: word offsets of the tail entity, `end` exclusive. It may touch, nest in, contain, equal or
                cross the head span; markers that share an offset follow `re_encoding_mmib.marker_order`.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                `"pt"` for torch tensors or `"np"` for numpy arrays.

        Returns:
            [`BatchFeature`] with, for a batch of B posts, L tokens, W kept words and m = `num_crops`:

            - **input_ids** `(B, L)` long, **attention_mask** `(B, L)` long, and **token_type_ids** `(B, L)` long
              if the tokenizer makes them.
            - NER: **word_index** `(B, W)` long, position of the first sub-word of each kept word, padded with -1
              (W >= 1); **labels** `(B, W)` long, padded with -100 (if `labels` given).
            - RE: **entity_positions** `(B, 2, 2)` long, `[[pos of <s>, pos of </s>], [pos of <o>, pos of </o>]]`;
              **labels** `(B,)` long (if `labels` given).
            - **pixel_values** `(B, 1 + m, 3, H, W)` float, slot 0 is the whole image, slots 1..m the crops, zeros
              where absent; left out when no post of the batch has any image or crop (text-only batch).
            - **image_mask** `(B, 1 + m)` bool, `True` where an image is present.

        Raises:
            ValueError: empty post, labels of the wrong length, span out of range, empty or not a pair, entities
                that do not fit in `max_length`, arguments that do not match the task, an undecodable image file
                (`UnreadableImageError`, a `ValueError`).
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
        batch_words = check_words(words)
        batch_size = len(batch_words)
        images = self._per_post(images, "images", batch_size)
        crops = self._per_post(crops, "crops", batch_size)

        if self.task == "ner":
            if head_spans is not None or tail_spans is not None:
                raise ValueError("head_spans and tail_spans are only used with task='re'; this processor does 'ner'.")
            labels = self._per_post(labels, "labels", batch_size)
            text_inputs = encode_ner(self.tokenizer, self.max_length, batch_words, labels)
        else:
            if head_spans is None or tail_spans is None:
                raise ValueError("task='re' needs both head_spans and tail_spans.")
            head_spans = self._per_post(head_spans, "head_spans", batch_size)
            tail_spans = self._per_post(tail_spans, "tail_spans", batch_size)
            labels = self._per_post(labels, "labels", batch_size)
            text_inputs = encode_re(self.tokenizer, self.max_length, batch_words, head_spans, tail_spans, labels)

        pixel_values, image_mask = encode_post_images(self.image_processor, images, crops, self.num_crops)
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
    def _per_post(values: Any, field: str, batch_size: int) -> list[Any]:
        if values is None:
            return [None] * batch_size
        if isinstance(values, str) or not isinstance(values, Sequence | torch.Tensor):
            raise TypeError(f"{field} must have one entry per post, got {type(values).__name__}.")
        if len(values) != batch_size:
            raise ValueError(f"{field} has {len(values)} entries but there are {batch_size} posts.")
        return list(values)

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
                truncation have fewer predictions than words (none at all for a post that kept no word).
            words (`list[list[str]]` or `list[str]`):
                The words of each post, as given to `__call__` (one post may be given as `list[str]`).
            id2label (`dict[int, str]`):
                Label names, e.g. `model.config.id2label`.

        Returns:
            `list[dict]`, one per post: `{"tags": list[str], "entities": list[dict], "truncated_words": int}` with
            one tag per word (words without a prediction, cut by truncation, get `"O"` and are counted in
            `truncated_words`) and entities `{"text", "type", "start", "end"}` in word offsets, `end` exclusive,
            `text = " ".join(words[start:end])`.
        """
        return token_classification_results(predictions, words, id2label)

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
        return relation_classification_results(logits, id2label)


def check_processor_matches_config(
    processor: MMIBProcessor, config: Mapping[str, Any] | Any, source: str = "the model config"
) -> None:
    """
    Refuses a processor that does not fit a model config.

    `num_crops` must be equal (the model has `1 + num_crops` image slots), and `max_length` must not exceed the text
    tower's `max_position_embeddings` (when the text config has one).

    Args:
        processor ([`MMIBProcessor`]): the processor.
        config (`MMIBConfig` or the `dict` of an MMIB `config.json`): the model's configuration.
        source (`str`, *optional*): where the config comes from, for the message.

    Raises:
        ValueError: naming both values and what to do.
    """
    config = config if isinstance(config, Mapping) else config.to_dict()
    num_crops = config.get("num_crops")
    if num_crops is not None and num_crops != processor.num_crops:
        raise ValueError(
            f"The processor has num_crops={processor.num_crops} but the model config of {source} has "
            f"num_crops={num_crops}: the model has 1 + num_crops image slots, so both must be equal. Save the "
            f"processor and the model together (e.g. from mmib.build_model_and_processor)."
        )
    text_config = config.get("text_config") or {}
    if not isinstance(text_config, Mapping):
        text_config = text_config.to_dict()
    max_positions = text_config.get("max_position_embeddings")
    if max_positions is not None and processor.max_length > max_positions:
        raise ValueError(
            f"The processor has max_length={processor.max_length} but the text tower of {source} has only "
            f"max_position_embeddings={max_positions}."
        )


def check_tokenizer_matches_embeddings(
    processor: "MMIBProcessor", model: Any | int, source: str = "the checkpoint"
) -> None:
    """
    Refuses a processor whose tokenizer can produce ids that the model's text embeddings do not have (a tokenizer
    from another model, or RE markers added without resizing the embeddings). A tokenizer smaller than the
    embedding matrix is accepted: embeddings padded to a multiple of 8 or 64 are common.

    Args:
        model (`PreTrainedModel` or `int`): the model, or the number of its embedding rows (an exported graph's).

    Raises:
        ValueError: `len(processor.tokenizer)` exceeds the number of embedding rows.
    """
    rows = model if isinstance(model, int) else model.get_input_embeddings().num_embeddings
    tokens = len(processor.tokenizer)
    if tokens > rows:
        raise ValueError(
            f"The tokenizer of {source} has {tokens} tokens but the model's text embeddings have {rows} rows "
            "(text_config.vocab_size): the tokenizer belongs to another model, or tokens were added without "
            "model.resize_token_embeddings(len(tokenizer)). Save the processor that was built with the model "
            "(mmib.build_model_and_processor does both)."
        )


MMIBProcessor.register_for_auto_class()

__all__ = [
    "ENTITY_MARKERS",
    "TASKS",
    "MMIBProcessor",
    "check_processor_matches_config",
    "check_tokenizer_matches_embeddings",
]
