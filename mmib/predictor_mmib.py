"""
Applying trained MMIB models to posts: NER with entity confidences, relation classification, and NER -> RE.

One predictor serves the `mmib predict` command, the transformers pipeline and the demo app. Travels with
checkpoints as remote code (see CONTRIBUTING.md).

Image features can come from a cache: [`MMIBPredictor`] takes an `image_feature_lookup` (a callable from an image
file path to its cached pooled feature vector, or `None`). Images and crops it knows are not opened at all and enter
the model as `image_features`; the others are decoded and run through the vision tower as usual, in the same
forward. `MMIBPredictor.from_pretrained(..., image_feature_cache=DIR)` builds the lookup from an on-disk
`mmib.features.ImageFeatureStore`, importing `mmib.features` only then (it is not remote code: that option needs
the `mmib` package installed).

A post is a raw string, or a dict with `text` (a raw string, split by [`split_words`]) or `words` (a list of
strings, as in training: a word that is white space only or that the tokenizer drops gets a tag too), and optionally
`id`, `image` (a path or a PIL image), `crops` (paths or PIL images) and, for a relation checkpoint on its own,
`head` / `tail` word spans `[start, end)`. Results are dicts:

- NER: `{"id", "text", "words", "tags", "entities": [{"text", "type", "start", "end", "word_start",
  "word_end", "score"}]}`: one BIO tag per word; `start` / `end` are character offsets into `text`
  (`text[start:end] == entity["text"]`; for a `words` post, `text` is the words joined by single spaces),
  `word_end` is exclusive, `score` is the CRF probability of the entity's tags (`MMIBCRF.span_probability`);
  with a relation model also `"relations": [{"head", "tail", "label", "score"}]` (`head` / `tail` index
  `entities`, `score` the softmax probability of `label`).
- RE alone: `{"id", "text", "words", "head", "tail", "label", "score"}`.
- A post that cannot be used: `{"id", "error"}`, the error naming the field and the problem.

Object crops of new posts (paper §III-B2): a post that brings an image and no `crops` gets its crops cut by the
object extractor the checkpoint's processor records (`processor.object_extraction`, see `object_extraction_mmib`),
or by the detector given as `object_detector`; its row then carries `"objects": [{"box": [x0, y0, x1, y1], "score",
"query"}]` in pixels of the upright image, in crop-slot order. A post with its own crops keeps them. A checkpoint
with crop slots but no recorded extractor (trained on a dataset's crops) warns once when such posts arrive.
A detector named by a checkpoint is loaded without `trust_remote_code` unless `detector_trust_remote_code=True`.
"""

import dataclasses
import importlib
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
    BatchFeature,
    PreTrainedModel,
    ProcessorMixin,
)

from .image_loading_mmib import encode_post_images
from .object_extraction_mmib import MMIBObjectExtractor
from .posts_mmib import PreparedPost, error_row, prepare_post
from .processing_mmib import check_processor_matches_config, check_tokenizer_matches_embeddings
from .quantization_mmib import quantize_int8

__all__ = [
    "TASK_AUTO_CLASSES",
    "MMIBPredictor",
    "PreparedPost",
    "load_checkpoint",
    "native_bf16",
    "resolve_device",
    "resolve_dtype",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.qint8}

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as given, else CUDA when present (this process's GPU under a launcher), else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def native_bf16(device: torch.device) -> bool:
    """
    Whether `device` multiplies bf16 natively, where bf16 autocast is faster than fp32 rather than emulated and
    slower: a CUDA device of compute capability 8.0 or higher (Ampere on; T4 and V100 emulate bf16, although
    `torch.cuda.is_bf16_supported()` says yes there), or a CPU with AVX512-BF16 or AMX (an AVX512 CPU without them
    emulates it, although oneDNN reports bf16 support there). Other devices count as not native.

    The CUDA answer is that of `device` itself, not of the current device; the CPU flags come from
    `torch.cpu.get_capabilities()` (cpuinfo), which every platform torch runs on answers.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        flags = torch.cpu.get_capabilities()
        return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))
    return False


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> tuple[torch.dtype, str]:
    """
    The compute dtype for `--dtype auto|float32|bfloat16|int8` (bf16 runs under autocast, see [`MMIBPredictor`];
    `int8` (`torch.qint8`) is dynamic int8 quantisation of the text and fusion layers on the CPU, see
    [`quantize_int8`]; `auto` never picks it: it costs F1, see docs/prediction.md).

    `auto` takes bfloat16 only where `device` multiplies it natively ([`native_bf16`]), else float32: emulated bf16
    is slower than fp32. `train_mmib.py --bf16 auto` follows the same rule.

    Returns:
        `(dtype, reason)`, the reason being a short human-readable note for the log.
    """
    if isinstance(dtype, torch.dtype):
        return dtype, "requested"
    if dtype in DTYPES:
        return DTYPES[dtype], "requested"
    if dtype != "auto":
        raise ValueError(f"Unknown dtype {dtype!r}: expected auto, float32, bfloat16 or int8.")
    if native_bf16(device):
        return torch.bfloat16, f"auto: native bf16 on {device}"
    return torch.float32, f"auto: no native bf16 on {device} (needs CUDA compute capability 8.0, AVX512-BF16 or AMX)"


TASK_AUTO_CLASSES = {"ner": AutoModelForTokenClassification, "re": AutoModelForSequenceClassification}


def load_checkpoint(
    model_name_or_path: str,
    task: str | None = None,
    num_crops: int | None = None,
    max_length: int | None = None,
    trust_remote_code: bool = False,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    The one checkpoint loader: a saved MMIB checkpoint (model + processor), checked against itself and the caller.
    The predictor, the pipeline, training (`load_model_and_processor`) and the analyses all load through it.

    Args:
        model_name_or_path (`str`): folder or Hub id of a checkpoint saved with its processor.
        task (`str`, *optional*): the task the caller expects (`"ner"` or `"re"`).
        num_crops, max_length (`int`, *optional*): values the caller expects. They are fixed once a model is
            built, so a value that differs from the checkpoint's is refused rather than silently ignored.
        trust_remote_code (`bool`): load the checkpoint's own code (not needed when `mmib` is installed).
        model_kwargs: passed to the model's `from_pretrained` (e.g. `beta_text`, `dtype`).

    Returns:
        `(model, processor)`; the model class follows `processor.task`.

    Raises:
        ValueError: not an MMIB checkpoint; the processor and the model config disagree (`num_crops`,
            `max_length` beyond the text tower's positions, a tokenizer larger than the text embeddings); or the
            checkpoint differs from `task`, `num_crops` or `max_length`.
    """
    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    if config.model_type != "mmib":
        raise ValueError(
            f"{model_name_or_path} is not an MMIB checkpoint (model_type {config.model_type!r}, expected 'mmib')."
        )
    processor = AutoProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    if task is not None and processor.task != task:
        raise ValueError(f"The checkpoint {model_name_or_path} does task {processor.task!r}, not {task!r}.")
    for name, value in (("num_crops", num_crops), ("max_length", max_length)):
        if value is not None and value != getattr(processor, name):
            raise ValueError(
                f"The checkpoint {model_name_or_path} was built with {name}={getattr(processor, name)}, not {value}; "
                f"{name} is fixed once a model is built (leave it unset to use the checkpoint's)."
            )
    model = TASK_AUTO_CLASSES[processor.task].from_pretrained(
        model_name_or_path, trust_remote_code=trust_remote_code, **model_kwargs
    )
    check_processor_matches_config(processor, model.config, source=str(model_name_or_path))
    check_tokenizer_matches_embeddings(processor, model, source=str(model_name_or_path))
    return model, processor


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



def entity_span_scores(
    crf: torch.nn.Module,
    emissions: torch.Tensor,
    mask: torch.Tensor,
    tags: torch.LongTensor,
    spans: Sequence[tuple[int, int, int]],
) -> torch.Tensor:
    """
    The CRF probability of each output entity's tags, `MMIBCRF.span_probability` computed only where it is read:
    the forward-backward recursion runs over the posts that have an entity, and all spans are scored at once from
    prefix sums of the path's emission and transition scores (in float64, so that the differences of prefix sums
    keep fp32's precision) instead of a few small tensor operations per span.

    Args:
        crf (`MMIBCRF`): the model's CRF.
        emissions (`torch.Tensor` of shape `(B, W, K)`), mask (`(B, W)`), tags (`(B, W)`): as for `span_probability`.
        spans (`Sequence[tuple[int, int, int]]`): `(post, start, end)` word spans, end exclusive.

    Returns:
        `torch.Tensor` of shape `(len(spans),)`.
    """
    if not spans:
        return emissions.new_zeros(0)
    spans = torch.tensor(spans, device=emissions.device)
    rows, post = torch.unique(spans[:, 0], return_inverse=True)
    emissions, mask, tags = emissions[rows], mask[rows], tags[rows].masked_fill(~mask[rows], 0)
    alpha, beta, log_z = crf.forward_backward(emissions, mask)
    start, last = spans[:, 1], spans[:, 2] - 1
    path_emissions = emissions.gather(2, tags[:, :, None]).squeeze(2).double()
    path_transitions = torch.nn.functional.pad(crf.transitions.double()[tags[:, :-1], tags[:, 1:]], (1, 0))
    prefix = (path_emissions + path_transitions).cumsum(dim=1)
    # Words start+1 .. last: their emissions and the transitions into them.
    inside = prefix[post, last] - prefix[post, start]
    first_tag, last_tag = tags[post, start], tags[post, last]
    score = alpha[post, start, first_tag].double() + inside + beta[post, last, last_tag].double() - log_z[post]
    return score.exp().to(emissions.dtype)


def _on_device(inputs: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The model's inputs on its device (a pipeline hands them over as a plain mapping, not a `BatchFeature`)."""
    return {name: value.to(device) for name, value in inputs.items()}


class MMIBPredictor:
    r"""
    Holds an MMIB checkpoint's processor and model (and optionally a relation checkpoint's) and applies them.

    Args:
        model ([`PreTrainedModel`]): an MMIB NER (`MMIBForTokenClassification`) or RE model, in eval mode.
        processor ([`ProcessorMixin`]): its processor (`processor.task` says which).
        relation_model ([`PreTrainedModel`], *optional*): an RE model to run on every ordered pair of the entities
            the NER model finds.
        relation_processor ([`ProcessorMixin`], *optional*): the RE model's processor.
        batch_size (`int`, *optional*, defaults to 32): posts (and relation pairs) per forward pass.
        max_pairs_per_post (`int`, *optional*, defaults to 240): entity pairs classified per post (16 entities);
            further pairs are counted in the result's `pairs_left_out`.
        keep_none (`bool`, *optional*, defaults to `False`): keep relations labelled `none_label`.
        none_label (`str`, *optional*, defaults to `"None"`): the no-relation label.
        compute_dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): `torch.bfloat16` runs the models
            under bf16 autocast (matrix products in bf16, normalisations, softmax and the CRF in fp32), which keeps
            the entities of fp32 far more often than casting the weights to bf16. `torch.qint8` means the models'
            text and fusion layers were quantised with [`quantize_int8`] (`from_pretrained(dtype="int8")` does it);
            the rest runs in fp32.
        image_feature_lookup (`Callable[[str], torch.Tensor | None]`, *optional*): cached pooled vision features
            of image files (see the module docstring); they must come from the models' own vision tower and image
            processor (`from_pretrained(image_feature_cache=...)` checks that).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        relation_model: PreTrainedModel | None = None,
        relation_processor: ProcessorMixin | None = None,
        batch_size: int = 32,
        max_pairs_per_post: int = 240,
        keep_none: bool = False,
        none_label: str = "None",
        compute_dtype: torch.dtype = torch.float32,
        image_feature_lookup: Callable[[str], torch.Tensor | None] | None = None,
    ):
        if (relation_model is None) != (relation_processor is None):
            raise ValueError("Give relation_model and relation_processor together.")
        if relation_model is not None and (processor.task != "ner" or relation_processor.task != "re"):
            raise ValueError("NER -> RE needs an NER model and a relation (task 're') model.")
        self.model = model.eval()
        self.processor = processor
        self.relation_model = None if relation_model is None else relation_model.eval()
        self.relation_processor = relation_processor
        self.batch_size = batch_size
        self.max_pairs_per_post = max_pairs_per_post
        self.keep_none = keep_none
        self.none_label = none_label
        self.compute_dtype = compute_dtype
        self.dtype_reason = "as given"
        self.image_feature_lookup = image_feature_lookup

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        relation_model: str | None = None,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
        image_feature_cache: str | None = None,
        object_detector: str | bool | None = None,
        detector_trust_remote_code: bool = False,
        **kwargs,
    ) -> "MMIBPredictor":
        """
        Loads an MMIB checkpoint (NER or RE) and, optionally, a relation checkpoint for NER -> RE.

        Args:
            model_name_or_path (`str`): folder or Hub id of the checkpoint.
            relation_model (`str`, *optional*): folder or Hub id of a relation checkpoint.
            dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`): see [`resolve_dtype`].
            device (`str`, *optional*): defaults to CUDA when present.
            trust_remote_code (`bool`): load the checkpoints' own code (not needed when `mmib` is installed).
            image_feature_cache (`str`, *optional*): an `ImageFeatureStore` folder built with these checkpoints'
                vision tower and image processor (a cache of another tower is refused); needs `mmib` installed.
            object_detector (`str` or `bool`, *optional*): see [`MMIBPredictor.configure_object_extraction`]:
                `None` the checkpoint's recorded extractor, a Hub id or folder another detector, `False` none.
            detector_trust_remote_code (`bool`, *optional*, defaults to `False`): load the detector's own code.
            kwargs: further [`MMIBPredictor`] arguments (`batch_size`, `max_pairs_per_post`, `keep_none`).
        """
        device = resolve_device(device)
        dtype, reason = resolve_dtype(dtype, device)
        models = []
        for path in (model_name_or_path, relation_model):
            if path is None:
                continue
            model, processor = load_checkpoint(path, trust_remote_code=trust_remote_code, dtype=torch.float32)
            model = model.to(device).eval()
            if dtype == torch.qint8:
                model = quantize_int8(model)
            models += [model, processor]
        predictor = cls(*models, compute_dtype=dtype, **kwargs)
        predictor.dtype_reason = reason
        predictor.configure_object_extraction(object_detector, detector_trust_remote_code)
        if image_feature_cache is not None:
            # The cache is part of the installed package, not of the remote code: imported by name at run time (so
            # transformers' remote-code import check does not require a pip package `mmib`), keeping the public
            # argument for users who have the package.
            try:
                features = importlib.import_module("mmib.features")
            except ImportError as error:
                raise ImportError(
                    "image_feature_cache needs the mmib package installed (pip install mmib)."
                ) from error
            prediction_feature_lookup = features.prediction_feature_lookup

            checkpoints = [(model_name_or_path, predictor.model, predictor.processor)]
            if relation_model is not None:
                checkpoints.append((relation_model, predictor.relation_model, predictor.relation_processor))
            predictor.image_feature_lookup = prediction_feature_lookup(image_feature_cache, checkpoints)
        return predictor

    @property
    def task(self) -> str:
        """`"ner"` or `"re"`, the task of the main checkpoint."""
        return self.processor.task

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the matrix products run in (the weights stay as loaded)."""
        return self.compute_dtype

    def _autocast(self):
        enabled = self.compute_dtype in (torch.bfloat16, torch.float16)
        return torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=enabled)

    def prepare(
        self, post: str | Mapping[str, Any], default_id: Any = None, base_dir: str | None = None
    ) -> PreparedPost:
        """[`prepare_post`] for this predictor's task."""
        return prepare_post(
            post, default_id, base_dir, self.task == "re", self.processor.num_crops, self.image_feature_lookup
        )

    def encode(self, posts: Sequence[PreparedPost]) -> BatchFeature:
        """Processor inputs for `posts` (all without error); posts with an image and no crops get objects first."""
        self.add_objects(posts)
        kwargs = {}
        if self.task == "re":
            kwargs = {"head_spans": [post.head for post in posts], "tail_spans": [post.tail for post in posts]}
        inputs = self.processor(
            [post.words for post in posts],
            images=[post.image for post in posts],
            crops=[post.crops for post in posts],
            **kwargs,
        )
        return add_cached_features(inputs, posts, self.processor.num_crops)

    def encode_batch(self, posts: list[PreparedPost]) -> BatchFeature | None:
        """
        [`encode`] for the posts of a batch without error; a post the processor rejects gets the processor's
        message as its error (the batch is then encoded post by post to find it).
        """
        good = [post for post in posts if post.error is None]
        if not good:
            return None
        try:
            return self.encode(good)
        except (ValueError, TypeError):
            for post in good:
                try:
                    self.encode([post])
                except (ValueError, TypeError) as error:
                    post.error, post.error_kind = str(error), "processor"
            good = [post for post in posts if post.error is None]
            return self.encode(good) if good else None

    @torch.inference_mode()
    def predict_prepared(self, posts: list[PreparedPost], inputs: BatchFeature | None = None) -> list[dict]:
        """
        Results for prepared posts, in order; `inputs` = [`encode_batch`] of them (computed here if not given).
        """
        if inputs is None:
            inputs = self.encode_batch(posts)
        good = [post for post in posts if post.error is None]
        results = {}
        if good:
            predict = self._predict_entities if self.task == "ner" else self._predict_relations
            results = {id(post): result for post, result in zip(good, predict(good, inputs))}
        return [with_objects(post, results.get(id(post)) or error_row(post)) for post in posts]

    def _predict_entities(self, posts: list[PreparedPost], inputs: BatchFeature) -> list[dict]:
        with self._autocast():
            inputs = _on_device(inputs, self.model.device)
            outputs = self.model(**inputs)
        emissions, mask = outputs.logits.float(), inputs["word_index"] >= 0
        tags = outputs.predictions
        processed = self.processor.post_process_token_classification(
            tags, [post.words for post in posts], self.model.config.id2label
        )
        spans = [
            (index, entity["start"], entity["end"])
            for index, result in enumerate(processed)
            for entity in result["entities"]
        ]
        scores = iter(entity_span_scores(self.model.crf, emissions, mask, tags, spans).tolist())
        results = []
        for post, result in zip(posts, processed):
            entities = []
            for entity in result["entities"]:
                start, end = post.offsets[entity["start"]][0], post.offsets[entity["end"] - 1][1]
                entities.append(
                    {
                        "text": post.text[start:end],
                        "type": entity["type"],
                        "start": start,
                        "end": end,
                        "word_start": entity["start"],
                        "word_end": entity["end"],
                        "score": next(scores),
                    }
                )
            results.append(
                {"id": post.id, "text": post.text, "words": post.words, "tags": result["tags"], "entities": entities}
            )
        if self.relation_model is not None:
            self._add_relations(posts, results)
        return results

    def _classify_pairs(self, pairs: list[tuple[PreparedPost, tuple[int, int], tuple[int, int]]]) -> list[dict]:
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
        inputs = self.relation_processor(
            [post.words for post, _, _ in chunk],
            images=[post.image for post, _, _ in chunk],
            crops=[post.crops for post, _, _ in chunk],
            head_spans=[head for _, head, _ in chunk],
            tail_spans=[tail for _, _, tail in chunk],
        )
        inputs = add_cached_features(inputs, [post for post, _, _ in chunk], self.relation_processor.num_crops)
        with self._autocast():
            logits = self.relation_model(**_on_device(inputs, self.relation_model.device)).logits
        return self.relation_processor.post_process_relation_classification(
            logits.float(), self.relation_model.config.id2label
        )

    def _with_relation_features(self, posts: list[PreparedPost]) -> list[PreparedPost]:
        """
        `posts` with every image and crop replaced by the relation model's pooled tower features (as if cached), so
        that each post's images go through its image processor and tower once, not once per entity pair. Posts
        without decoded images are returned as they are; the originals are not changed.
        """
        num_crops = self.relation_processor.num_crops
        with_pixels = [post for post in posts if post.image is not None or any(c is not None for c in post.crops)]
        views = {}
        for start in range(0, len(with_pixels), self.batch_size):
            chunk = with_pixels[start : start + self.batch_size]
            pixel_values, image_mask = encode_post_images(
                self.relation_processor.image_processor,
                [post.image for post in chunk],
                [post.crops for post in chunk],
                num_crops,
            )
            with self._autocast():
                pixels = pixel_values[image_mask].to(self.relation_model.device, self.relation_model.dtype)
                features = self.relation_model.mmib.get_image_features(pixels).float().cpu()
            rows = iter(features)
            for index, post in enumerate(chunk):
                cached = {slot: vector for slot, vector in post.cached_features.items() if slot <= num_crops}
                cached |= {slot: next(rows) for slot in range(1 + num_crops) if image_mask[index, slot]}
                views[id(post)] = dataclasses.replace(
                    post, image=None, crops=[None] * len(post.crops), cached_features=cached
                )
        return [views.get(id(post), post) for post in posts]

    def _add_relations(self, posts: list[PreparedPost], results: list[dict]) -> None:
        with_pairs = [index for index, result in enumerate(results) if len(result["entities"]) > 1]
        posts = list(posts)
        for index, view in zip(with_pairs, self._with_relation_features([posts[index] for index in with_pairs])):
            posts[index] = view
        pairs, owners = [], []
        for index, (post, result) in enumerate(zip(posts, results)):
            entities = result["entities"]
            ordered = list(itertools.permutations(range(len(entities)), 2))
            if len(ordered) > self.max_pairs_per_post:
                result["pairs_left_out"] = len(ordered) - self.max_pairs_per_post
            for head, tail in ordered[: self.max_pairs_per_post]:
                spans = [(entities[i]["word_start"], entities[i]["word_end"]) for i in (head, tail)]
                pairs.append((post, *spans))
                owners.append((index, head, tail))
            result["relations"] = []
        for (index, head, tail), relation in zip(owners, self._classify_pairs(pairs)):
            if "error" in relation:
                results[index].setdefault("relation_errors", []).append({"head": head, "tail": tail, **relation})
            elif self.keep_none or relation["label"] != self.none_label:
                results[index]["relations"].append({"head": head, "tail": tail, **relation})

    def _predict_relations(self, posts: list[PreparedPost], inputs: BatchFeature) -> list[dict]:
        with self._autocast():
            logits = self.model(**_on_device(inputs, self.model.device)).logits
        labels = self.processor.post_process_relation_classification(logits.float(), self.model.config.id2label)
        return [
            {"id": post.id, "text": post.text, "words": post.words, "head": list(post.head), "tail": list(post.tail)}
            | label
            for post, label in zip(posts, labels)
        ]

    def __call__(
        self, posts: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]] | Iterable[str | Mapping[str, Any]]
    ) -> dict | list[dict] | Iterator[dict]:
        """
        Predicts for one post (returns a dict), a list or tuple of posts (a list) or any other iterable of posts
        (a generator that reads and predicts `batch_size` posts at a time). Posts without `id` get their index.
        """
        if isinstance(posts, str | Mapping):
            return self.predict_prepared([self.prepare(posts, 0)])[0]
        if isinstance(posts, list | tuple):
            return list(self._stream(posts))
        return self._stream(posts)

    def _stream(self, posts: Iterable[str | Mapping[str, Any]]) -> Iterator[dict]:
        numbered = enumerate(posts)
        while batch := list(itertools.islice(numbered, self.batch_size)):
            yield from self.predict_prepared([self.prepare(post, index) for index, post in batch])

    # Object extraction for posts without crops. Class-level defaults keep a predictor built directly (the pipeline
    # builds one from a model and a processor) on the checkpoint's recorded extractor.
    object_detector: str | bool | None = None
    detector_trust_remote_code: bool = False
    _object_extractor: MMIBObjectExtractor | None = None
    _object_extraction_resolved: bool = False
    _warned_missing_crops: bool = False

    def configure_object_extraction(
        self,
        object_detector: str | bool | None = None,
        trust_remote_code: bool = False,
        extractor: MMIBObjectExtractor | None = None,
    ) -> None:
        """
        Chooses how posts with an image and no crops get crops.

        Args:
            object_detector (`str` or `bool`, *optional*): `None` or `True`: the extractor recorded in the
                checkpoint's processor (`processor.object_extraction`), none if it records none; a Hub id or folder:
                that detector, with the recorded settings if it is the recorded detector, else its defaults and the
                checkpoint's `num_crops`; `False`: no extraction (and no warning about missing crops).
            trust_remote_code (`bool`, *optional*, defaults to `False`): load the detector's own code; never
                implied by the checkpoint.
            extractor ([`MMIBObjectExtractor`], *optional*): an extractor built by the caller (overrides the rest).
        """
        self.object_detector = object_detector
        self.detector_trust_remote_code = trust_remote_code
        self._object_extractor = extractor
        self._object_extraction_resolved = extractor is not None
        self._warned_missing_crops = False

    def object_extraction_settings(self) -> dict[str, Any] | None:
        """The extractor settings posts without crops get (see [`configure_object_extraction`]), `None` for none."""
        if self.processor.num_crops == 0 or self.object_detector is False:
            return None
        recorded = getattr(self.processor, "object_extraction", None)
        if self.object_detector in (None, True):
            return None if recorded is None else dict(recorded)
        detector = os.fspath(self.object_detector)
        if recorded is not None and recorded.get("detector") == detector:
            return dict(recorded)
        return {"detector": detector, "num_crops": self.processor.num_crops}

    @property
    def object_extractor(self) -> MMIBObjectExtractor | None:
        """The extractor for posts without crops, loaded at first use (`None`: no extraction)."""
        if not self._object_extraction_resolved:
            self._object_extraction_resolved = True
            settings = self.object_extraction_settings()
            if settings is not None:
                recorded = self.object_detector in (None, True)
                logger.warning(
                    "Loading object detector %s (revision %s)%s, trust_remote_code=%s.",
                    settings["detector"],
                    settings.get("revision") or "main",
                    " recorded by the checkpoint" if recorded else "",
                    self.detector_trust_remote_code,
                )
                settings["num_crops"] = min(
                    settings.get("num_crops", self.processor.num_crops), self.processor.num_crops
                )
                self._object_extractor = MMIBObjectExtractor.from_dict(
                    settings, trust_remote_code=self.detector_trust_remote_code, device=self.device
                )
        return self._object_extractor

    def add_objects(self, posts: Sequence[PreparedPost]) -> None:
        """
        Cuts the crops of posts (without error) that bring an image and no crops, with [`object_extractor`], and
        records them in `post.objects`; posts with their own crops, cached image features or extracted objects are
        left alone. Without an extractor, warns once that the checkpoint's crop slots stay empty.
        """
        todo = [
            post
            for post in posts
            if post.error is None
            and post.image is not None
            and not post.crops
            and post.objects is None
            and not any(slot > 0 for slot in post.cached_features)
        ]
        if not todo or self.processor.num_crops == 0:
            return
        extractor = self.object_extractor
        if extractor is None:
            if self.object_detector is not False and not self._warned_missing_crops:
                self._warned_missing_crops = True
                logger.warning(missing_crops_message(self.processor.num_crops))
            return
        found = extractor(
            [post.image for post in todo],
            words=[post.words for post in todo],
            head_spans=[post.head for post in todo],
            tail_spans=[post.tail for post in todo],
        )
        for post, objects in zip(todo, found):
            objects = (objects or [])[: self.processor.num_crops]
            post.crops = [item.crop for item in objects]
            post.objects = [item.to_dict() for item in objects]


def missing_crops_message(num_crops: int) -> str:
    """The once-per-predictor warning: a checkpoint with crop slots, no recorded extractor, posts without crops."""
    return (
        f"This checkpoint was trained with {num_crops} object crops per post taken from its dataset (no object "
        "extractor is recorded with it), but posts here bring an image and no crops: they get the whole image only "
        f"and {num_crops} empty crop slots. Pass --object_detector ID_OR_PATH (MMIBPredictor.from_pretrained("
        "object_detector=...)) to cut crops with a detector, give each post its `crops`, or pass "
        "--no_object_detector to silence this."
    )


def with_objects(post: PreparedPost, row: dict) -> dict:
    """`row` with the post's extracted `objects` (when it has any and is not an error row)."""
    if post.objects is not None and "error" not in row:
        row["objects"] = post.objects
    return row
