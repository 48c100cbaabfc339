"""Reader of the Twitter-2015 / Twitter-2017 CoNLL layout (multimodal NER)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import datasets

from ..posts_mmib import PreparedPost
from .labels import check_bio_names, check_ner_tags, infer_ner_labels
from .media import IMGID_PREFIX, PathLike, attach_crops, crop_dicts_for, resolver, split_folder
from .rows import build_split, ner_features, ner_row, read_lines

TWITTER_SPLITS: Mapping[str, str] = MappingProxyType(
    {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
)


def read_conll(path: Path) -> list[PreparedPost]:
    """Parses an ``IMGID:<id>`` / ``token<TAB>tag`` / blank-line file; the last post may lack a blank line.

    Raises:
        ValueError: naming file and line of a malformed line (no TAB, empty token or tag, token line outside a
            post, empty IMGID) or of a post without tokens; also for a file without posts.
    """
    posts: list[PreparedPost] = []
    current: PreparedPost | None = None
    start_line = 0
    for line_no, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            _close_post(current, start_line, path, posts)
            current = None
        elif line.startswith(IMGID_PREFIX):
            _close_post(current, start_line, path, posts)
            image_id = line[len(IMGID_PREFIX) :].strip()
            if not image_id:
                raise ValueError(f"{path}:{line_no}: empty IMGID")
            current, start_line = PreparedPost(id=image_id, words=[], tags=[], line=line_no, word_lines=[]), line_no
        elif current is None:
            raise ValueError(f"{path}:{line_no}: token line outside a post (no IMGID line before it): {line!r}")
        else:
            word, tag = _split_token_line(line, path, line_no)
            current.words.append(word)
            current.tags.append(tag)
            current.word_lines.append(line_no)
    _close_post(current, start_line, path, posts)
    if not posts:
        raise ValueError(f"{path}: no posts found")
    return posts


def _split_token_line(line: str, path: Path, line_no: int) -> tuple[str, str]:
    """Splits ``token<TAB>tag`` at the last TAB; the token is kept verbatim (it may be e.g. U+00A0)."""
    word, sep, tag = line.rpartition("\t")
    tag = tag.strip()
    if not sep:
        raise ValueError(f"{path}:{line_no}: expected 'token<TAB>tag', found no TAB: {line!r}")
    if not tag:
        raise ValueError(f"{path}:{line_no}: empty tag: {line!r}")
    if not word:
        raise ValueError(f"{path}:{line_no}: empty token: {line!r}")
    return word, tag


def _close_post(post: PreparedPost | None, start_line: int, path: Path, posts: list[PreparedPost]) -> None:
    """Appends a finished post; a post without tokens is an error."""
    if post is None:
        return
    if not post.words:
        raise ValueError(f"{path}:{start_line}: post {IMGID_PREFIX}{post.id} has no tokens")
    posts.append(post)


def load_twitter_ner(
    data_dir: PathLike,
    image_dir: PathLike | None = None,
    crop_dir: PathLike | None = None,
    crop_dicts: Mapping[str, PathLike] | None = None,
    splits: Mapping[str, str] = TWITTER_SPLITS,
    num_crops: int | None = None,
    label_names: Sequence[str] | None = None,
) -> datasets.DatasetDict:
    """Reads Twitter-2015 / Twitter-2017 (UMT / HVPNeT layout) into a NER ``DatasetDict``.

    With ``name = Path(data_dir).name`` (``twitter2015`` or ``twitter2017``) the default layout is::

        <data_dir>/{train,valid,test}.txt                      text (``splits``)
        <data_dir>/<name>_images/<IMGID>.jpg                   images (``image_dir``)
        <data_dir>/<name>_{train,val,test}_dict.pth            crop dictionaries (``crop_dicts``)
        <data_dir>/<name>_aux_images/{train,val,test}/crops/   crops (``crop_dir``)

    A crop dictionary maps ``"<IMGID>.jpg"`` to crop file names; the first ``num_crops`` are used. A default
    crop dictionary that does not exist means no crops (with a warning). Missing image and crop files are
    counted, not errors (see the module docstring).

    Args:
        data_dir: folder of the split files.
        image_dir: folder of ``<IMGID>.jpg`` images.
        crop_dir: folder holding ``<split folder>/crops/<name>`` (split folders ``train``, ``val``, ``test``).
        crop_dicts: ``{split: path}`` of crop dictionaries (``.pth`` or ``.json``); splits not listed get no
            crops. None = ``<crop_dir>/<split folder>_dict.json`` if a ``crop_dir`` is given and it exists (what
            ``mmib extract-objects`` writes), else the default file (``.pth``, or ``.json`` of the same name).
        splits: ``{split: file name in data_dir}``.
        num_crops: maximum number of crops per post (None = every listed crop; the processor keeps the first
            ``processor.num_crops``). ``train_mmib.py`` passes the model's value.
        label_names: BIO label names (ClassLabel order). None = inferred from the training split.

    Returns:
        ``DatasetDict`` of NER rows.

    Raises:
        FileNotFoundError: if a split file or an explicit crop dictionary is missing.
        ValueError: naming file and line for a malformed line or an unknown tag; naming the file for an
            unreadable crop dictionary.
    """
    data_dir = Path(data_dir).absolute()
    name = data_dir.name
    image_dir = Path(image_dir) if image_dir is not None else data_dir / f"{name}_images"
    given_crop_dir = crop_dir
    crop_dir = Path(crop_dir) if crop_dir is not None else data_dir / f"{name}_aux_images"
    parsed = {split: (data_dir / file_name, read_conll(data_dir / file_name)) for split, file_name in splits.items()}
    names = check_bio_names(label_names) if label_names is not None else infer_ner_labels(parsed)
    label_ids = {label: index for index, label in enumerate(names)}
    crop_maps = crop_dicts_for(
        splits, crop_dicts, lambda split: data_dir / f"{name}_{split_folder(split)}_dict.pth", given_crop_dir
    )
    result = {}
    for split, (source, posts) in parsed.items():
        check_ner_tags(source, posts, label_ids)
        resolve_image = resolver(image_dir)
        for post in posts:
            post.image = resolve_image(f"{post.id}.jpg")
        keys = [f"{post.id}.jpg" for post in posts]
        crops_folder = crop_dir / split_folder(split) / "crops"
        without_entry = attach_crops(keys, posts, crop_maps[split], crops_folder, num_crops)
        result[split] = build_split(split, source, posts, ner_features(names), ner_row(label_ids), without_entry)
    return datasets.DatasetDict(result)
