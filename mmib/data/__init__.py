"""Dataset readers for MMIB: Twitter-2015/2017 NER, MNRE relations, and a JSON-lines format for own posts.

Every reader returns a ``datasets.DatasetDict`` (splits ``train`` / ``validation`` / ``test`` by default) with
the rows of the package contract; ``image`` and ``crops`` hold absolute paths of files that exist:

- NER: ``{"id": str, "words": list[str], "ner_tags": list[int] (ClassLabel ids), "image": str | None,
  "crops": list[str]}``.
- RE: ``{"id": str, "words": list[str], "head_span": [start, end], "tail_span": [start, end],
  "relation": int (ClassLabel id), "image": str | None, "crops": list[str]}``; spans are word offsets with the
  end exclusive.

Label names
-----------
NER labels are inferred from the ``train`` split (from all splits if there is no ``train`` split) unless
``label_names`` is given: ``"O"`` first, then ``B-<type>``, ``I-<type>`` for every entity type seen, types ordered
PER, LOC, ORG, MISC, OTHER, then any other type alphabetically. Twitter-2017 thus gets ``O, B-PER, I-PER, B-LOC,
I-LOC, B-ORG, I-ORG, B-MISC, I-MISC``; Twitter-2015 the same with ``OTHER`` for ``MISC`` (no renaming). A tag of
another split that is not among the labels is an error naming the file and line. MNRE relation labels come from
``ours_rel2id.json`` in id order (``"None"`` = 0). JSON-lines relation labels, when not given, are ``"None"``
(if present) followed by the other relations of the ``train`` split (or all splits) alphabetically.

Missing images and crops
------------------------
Only a few sample images exist for the benchmarks, so a missing image or crop file is not an error: the
``image`` becomes ``None`` and the crop is left out of ``crops``. Each split's counts are kept in a
:class:`MissingMediaReport`, logged once per split with ``logger.warning`` (with the first few missing paths) and
stored as JSON in the split's ``Dataset.info.description`` (key ``"mmib_missing_media"``), which
``save_to_disk`` / ``load_from_disk`` and ``map`` keep. :func:`missing_media_report` reads it back.

JSON-lines format
-----------------
One JSON object per line (UTF-8; blank lines are skipped; other keys are ignored):

- NER: ``{"id": "post-1", "words": ["Messi", "in", "Paris"], "tags": ["B-PER", "O", "B-LOC"],
  "image": "images/post-1.jpg", "crops": ["crops/post-1_0.png"]}``
- RE: ``{"id": "rel-1", "words": ["Messi", "joins", "PSG"], "head": [0, 1], "tail": [2, 3],
  "relation": "/per/org/member_of", "image": "images/post-1.jpg", "crops": []}``

The posts are read by the one post reader of every command (``mmib.post_files``, field rules in
``mmib.posts_mmib``): ``words`` (non-empty), or a raw ``text`` split into words as ``mmib predict`` splits it; RE
needs ``head`` and ``tail`` (``[start, end)`` word offsets, ``0 <= start < end <= len(words)``). On top, NER needs
``tags`` (one BIO tag per word) and RE ``relation``. ``id`` is optional (a string or an integer; default: the
0-based record number in its file), ``image`` is optional (``null`` = no image) and ``crops`` is optional (default
``[]``). Relative image and crop paths are resolved against ``image_root`` (default: the folder of the JSON-lines
file). Malformed JSON, a missing or invalid field, a length mismatch or an unknown label raises ``ValueError``
naming the file and line. :func:`write_jsonl` writes a split in this format.
"""

from ..processing_mmib import TASKS
from .jsonl import load_jsonl, write_jsonl
from .labels import ENTITY_TYPE_ORDER, bio_label_names
from .media import IMGID_PREFIX, REPORT_KEY, MissingMediaReport, missing_media_report, read_crop_dict
from .mnre import MNRE_CROP_DICTS, MNRE_SPLITS, load_mnre, read_relation_labels
from .rows import ner_features, re_features
from .twitter import TWITTER_SPLITS, load_twitter_ner

__all__ = [
    "ENTITY_TYPE_ORDER",
    "IMGID_PREFIX",
    "MNRE_CROP_DICTS",
    "MNRE_SPLITS",
    "REPORT_KEY",
    "TASKS",
    "TWITTER_SPLITS",
    "MissingMediaReport",
    "bio_label_names",
    "load_jsonl",
    "load_mnre",
    "load_twitter_ner",
    "missing_media_report",
    "ner_features",
    "re_features",
    "read_crop_dict",
    "read_relation_labels",
    "write_jsonl",
]
