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

The predictor applies; its parts live beside it: loading and the device / precision policy in `checkpoints_mmib`,
the crops of posts without crops in `crop_filling_mmib`, the NER -> RE stage in `relation_stage_mmib`.
"""

import contextlib
import importlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from transformers import BatchFeature, PreTrainedModel, ProcessorMixin

from .checkpoints_mmib import load_checkpoint, prepare_for_inference, resolve_device, resolve_dtype
from .crop_filling_mmib import CropFiller, with_objects
from .object_extraction_mmib import MMIBObjectExtractor
from .onnx_runtime_mmib import (
    MMIBOnnxRuntimeModel,
    default_onnx_dir,
    has_export,
    load_onnx_checkpoint,
    resolve_backend,
)
from .posts_mmib import PreparedPost, error_row, prepare_post
from .quantization_mmib import quantize_int8
from .relation_stage_mmib import RelationStage, add_cached_features, on_device

__all__ = ["MMIBPredictor", "PreparedPost"]


class MMIBPredictor:
    r"""
    Holds an MMIB checkpoint's processor and model (and optionally a relation checkpoint's) and applies them.

    Args:
        model ([`PreTrainedModel`]): an MMIB NER (`MMIBForTokenClassification`) or RE model, in eval mode.
        processor ([`ProcessorMixin`]): its processor (`processor.task` says which).
        relation_model ([`PreTrainedModel`], *optional*): an RE model to run on the ordered pairs of the entities
            the NER model finds: the pairs whose predicted types match a (head type, tail type) signature its config
            records (`relation_type_signatures`, written by the training run), or every pair if it records none.
        relation_processor ([`ProcessorMixin`], *optional*): the RE model's processor.
        batch_size (`int`, *optional*, defaults to 32): posts (and relation pairs) per forward pass.
        max_pairs_per_post (`int`, *optional*, defaults to 240): entity pairs classified per post (16 entities);
            further pairs are counted in the result's `pairs_left_out`.
        keep_none (`bool`, *optional*, defaults to `False`): keep relations labelled `none_label`.
        none_label (`str`, *optional*, defaults to `"None"`): the no-relation label.
        all_pairs (`bool`, *optional*, defaults to `False`): classify every ordered pair of entities, also those
            whose types match none of the relation model's type signatures (by default they get the no-relation
            label without a forward pass and are counted in the result's `pairs_skipped_by_type`).
        compute_dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): `torch.bfloat16` runs the models
            under bf16 autocast (matrix products in bf16, normalisations, softmax and the CRF in fp32), which keeps
            the entities of fp32 more often than casting all the weights to bf16. [`from_pretrained`] casts the
            weights of the linear, convolution and embedding layers once (see [`prepare_for_inference`]: autocast
            would cast the first two at every forward). `torch.qint8` means the models' text and fusion layers
            were quantised with [`quantize_int8`] (`from_pretrained(dtype="int8")` does it); the rest runs in fp32.
        image_feature_lookup (`Callable[[str], torch.Tensor | None]`, *optional*): cached pooled vision features
            of image files (see the module docstring); they must come from the models' own vision tower and image
            processor (`from_pretrained(image_feature_cache=...)` checks that).
        object_detector (`str` or `bool`, *optional*): the detector of posts with an image and no crops (see
            [`CropFiller`]): `None` the checkpoint's recorded extractor, a Hub id or folder another detector,
            `False` none.
        detector_trust_remote_code (`bool`, *optional*, defaults to `False`): load the detector's own code.
        object_extractor ([`MMIBObjectExtractor`], *optional*): an extractor built by the caller (overrides
            `object_detector`).
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
        all_pairs: bool = False,
        compute_dtype: torch.dtype = torch.float32,
        image_feature_lookup: Callable[[str], torch.Tensor | None] | None = None,
        object_detector: str | bool | None = None,
        detector_trust_remote_code: bool = False,
        object_extractor: MMIBObjectExtractor | None = None,
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
        self.compute_dtype = compute_dtype
        self.dtype_reason = "as given"
        self.backend = "onnxruntime" if isinstance(model, MMIBOnnxRuntimeModel) else "torch"
        self.backend_reason = "as given"
        self.image_feature_lookup = image_feature_lookup
        self.relations = None
        if relation_model is not None:
            self.relations = RelationStage(
                self.relation_model,
                relation_processor,
                self._autocast,
                batch_size,
                max_pairs_per_post,
                keep_none,
                none_label,
                None if all_pairs else getattr(self.relation_model.config, "relation_type_signatures", None),
            )
            self.relations.warn_unknown_types(
                {label.split("-", 1)[1] for label in model.config.id2label.values() if "-" in label}
            )
        self.crop_filler = CropFiller(
            processor.num_crops,
            getattr(processor, "object_extraction", None),
            object_detector,
            detector_trust_remote_code,
            object_extractor,
        )

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        relation_model: str | None = None,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
        image_feature_cache: str | None = None,
        backend: str = "auto",
        onnx_dir: str | None = None,
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
            backend (`str`, *optional*, defaults to `"auto"`): `"torch"`, `"onnxruntime"` (the text side runs as
                the graph `mmib export-onnx` wrote, see `onnx_runtime_mmib`) or `"auto"` (see [`resolve_backend`]:
                the path measured fastest at export among those that keep the tags of fp32, else torch). A relation
                checkpoint runs on the same backend (its own `onnx/` folder); under `"auto"` one without an
                export runs in torch.
            onnx_dir (`str`, *optional*): the main checkpoint's export folder (default: its `onnx/` folder).
            kwargs: further [`MMIBPredictor`] arguments (`batch_size`, `max_pairs_per_post`, `keep_none`,
                `all_pairs`, `object_detector`, `detector_trust_remote_code`).
        """
        device = resolve_device(device)
        onnx_dir = default_onnx_dir(model_name_or_path) if onnx_dir is None else onnx_dir
        chosen_backend, dtype, backend_reason = resolve_backend(backend, dtype, device, onnx_dir)
        if chosen_backend == "onnxruntime":
            reason = backend_reason
            graph_dtype, dtype = dtype, torch.qint8 if dtype == "int8" else torch.float32
        else:
            dtype, reason = resolve_dtype(dtype, device)
        models, graph_notes = [], []
        for path, folder in ((model_name_or_path, onnx_dir), (relation_model, None)):
            if path is None:
                continue
            folder = default_onnx_dir(path) if folder is None else folder
            # Under `auto` a relation checkpoint without an export runs in torch, at the same dtype.
            if chosen_backend == "onnxruntime" and (backend != "auto" or has_export(folder)):
                # The graph holds the text side: the torch model is not loaded (see `load_onnx_checkpoint`).
                model, processor = load_onnx_checkpoint(path, folder, graph_dtype, trust_remote_code)
                if model.graph_fallback is not None:
                    graph_notes.append(f"plain graph of {path}: {model.graph_fallback}")
            else:
                model, processor = load_checkpoint(path, trust_remote_code=trust_remote_code, dtype=torch.float32)
                model = model.to(device).eval()
                if dtype == torch.qint8:
                    model = quantize_int8(model)
            models += [model, processor]
        predictor = cls(*models, compute_dtype=dtype, **kwargs)
        predictor.dtype_reason = reason
        predictor.backend = chosen_backend
        predictor.backend_reason = "; ".join([backend_reason, *graph_notes])
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
        for model in (predictor.model, predictor.relation_model):
            if isinstance(model, PreTrainedModel):  # a torch model (not an ONNX Runtime one)
                prepare_for_inference(model, dtype)
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
        """The dtype the matrix products run in (see `compute_dtype`)."""
        return self.compute_dtype

    @property
    def object_extractor(self) -> MMIBObjectExtractor | None:
        """The extractor of posts with an image and no crops, loaded at first use (`None`: no extraction)."""
        return self.crop_filler.extractor(self.device, self.compute_dtype)

    @contextlib.contextmanager
    def options(
        self, batch_size: int | None = None, keep_none: bool | None = None, max_pairs_per_post: int | None = None
    ) -> Iterator["MMIBPredictor"]:
        """
        Other `batch_size`, `keep_none` or `max_pairs_per_post` (see `__init__`) for the calls inside the block, e.g.
        one request of a server; `None` keeps the predictor's own. The relation options need a relation model.

        Raises:
            ValueError: a relation option without a relation model.
        """
        relation_options = {"keep_none": keep_none, "max_pairs_per_post": max_pairs_per_post}
        relation_options = {name: value for name, value in relation_options.items() if value is not None}
        if relation_options and self.relations is None:
            raise ValueError(f"{sorted(relation_options)} need a relation model (NER -> RE).")
        targets = [(self, {"batch_size": batch_size})]
        if self.relations is not None:
            targets.append((self.relations, {"batch_size": batch_size, **relation_options}))
        saved = []
        for target, values in targets:
            for name, value in values.items():
                if value is not None:
                    saved.append((target, name, getattr(target, name)))
                    setattr(target, name, value)
        try:
            yield self
        finally:
            for target, name, value in reversed(saved):
                setattr(target, name, value)

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

    def length_order(self, posts: Sequence[PreparedPost]) -> list[int]:
        """
        Indexes of `posts` in order of their sub-word count (posts with an error first; ties in input order):
        batches of posts taken in this order pad little. One tokenizer call over the posts' words.
        """
        good = [index for index, post in enumerate(posts) if post.error is None and post.words]
        if not good:
            return list(range(len(posts)))
        encoding = self.processor.tokenizer(
            [posts[index].words for index in good], is_split_into_words=True, add_special_tokens=False
        )
        counts = dict(zip(good, map(len, encoding["input_ids"])))
        return sorted(range(len(posts)), key=lambda index: counts.get(index, -1))

    def encode(self, posts: Sequence[PreparedPost]) -> BatchFeature:
        """Processor inputs for `posts` (all without error); posts with an image and no crops get objects first."""
        self.crop_filler.add_objects(posts, self.device, self.compute_dtype)
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
            inputs = on_device(inputs, self.model.device)
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
        scores = iter(self.model.crf.span_probability(emissions, mask, tags, spans).tolist())
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
        if self.relations is not None:
            self.relations.add_relations(posts, results)
        return results

    def _predict_relations(self, posts: list[PreparedPost], inputs: BatchFeature) -> list[dict]:
        with self._autocast():
            logits = self.model(**on_device(inputs, self.model.device)).logits
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
