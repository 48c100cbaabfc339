"""BIO label names: order, inference and checks; relation label inference and checks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..posts_mmib import PreparedPost
from ..re_encoding_mmib import normalize_entity_type

ENTITY_TYPE_ORDER = ("PER", "LOC", "ORG", "MISC", "OTHER")


def _entity_type(tag: str) -> str | None:
    """Entity type of a BIO tag (None for ``"O"``).

    Raises:
        ValueError: if the tag is not ``O``, ``B-<type>`` or ``I-<type>``.
    """
    if tag == "O":
        return None
    prefix, sep, entity_type = tag.partition("-")
    if prefix not in ("B", "I") or not sep or not entity_type:
        raise ValueError(f"tag {tag!r} is not a BIO tag (O, B-<type>, I-<type>)")
    return entity_type


def bio_label_names(entity_types: Iterable[str]) -> list[str]:
    """BIO label names for a set of entity types, in the package's canonical order.

    Args:
        entity_types: entity type names (duplicates allowed).

    Returns:
        ``["O", "B-T1", "I-T1", ...]`` with types ordered PER, LOC, ORG, MISC, OTHER, then others alphabetically.
    """

    def rank(entity_type: str) -> tuple[int, str]:
        known = ENTITY_TYPE_ORDER.index(entity_type) if entity_type in ENTITY_TYPE_ORDER else len(ENTITY_TYPE_ORDER)
        return known, entity_type

    ordered = sorted(set(entity_types), key=rank)
    return ["O"] + [f"{prefix}-{entity_type}" for entity_type in ordered for prefix in ("B", "I")]


def tag_lines(post: PreparedPost) -> list[int]:
    """The source line of each of a post's tags: its `word_lines`, or its `line` for every tag."""
    return post.word_lines if post.word_lines is not None else [post.line] * len(post.tags)


def _label_source_splits(split_names: Iterable[str]) -> list[str]:
    """Splits labels are inferred from: ``train`` if present, else all."""
    names = list(split_names)
    return ["train"] if "train" in names else names


def infer_ner_labels(parsed: Mapping[str, tuple[Path, list[PreparedPost]]]) -> list[str]:
    """Infers BIO label names from the training split (or all splits), checking the tag syntax.

    Raises:
        ValueError: naming file and line of a tag that is not BIO.
    """
    entity_types = set()
    for split in _label_source_splits(parsed):
        source, posts = parsed[split]
        for post in posts:
            for tag, line in zip(post.tags, tag_lines(post)):
                try:
                    entity_type = _entity_type(tag)
                except ValueError as err:
                    raise ValueError(f"{source}:{line}: {err}") from err
                if entity_type is not None:
                    entity_types.add(entity_type)
    return bio_label_names(entity_types)


def unique_names(label_names: Sequence[str]) -> list[str]:
    """Validates explicit label names: non-empty strings without duplicates."""
    names = list(label_names)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"label_names must be a non-empty list of non-empty strings, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"label_names contains duplicates: {names}")
    return names


def check_bio_names(label_names: Sequence[str]) -> list[str]:
    """Validates explicit BIO label names (unique, BIO syntax)."""
    names = unique_names(label_names)
    for name in names:
        _entity_type(name)
    return names


def check_ner_tags(source: Path, posts: Iterable[PreparedPost], label_ids: Mapping[str, int]) -> None:
    """Raises ValueError naming file and line of the first tag not in ``label_ids``."""
    for post in posts:
        for tag, line in zip(post.tags, tag_lines(post)):
            if tag not in label_ids:
                raise ValueError(f"{source}:{line}: unknown tag {tag!r}; known labels: {list(label_ids)}")


def check_relations(source: Path, posts: Iterable[PreparedPost], label_ids: Mapping[str, int]) -> None:
    """Raises ValueError naming file and line of the first relation not in ``label_ids``."""
    for post in posts:
        if post.relation not in label_ids:
            raise ValueError(f"{source}:{post.line}: unknown relation {post.relation!r}; known: {list(label_ids)}")


def infer_relation_labels(
    parsed: Mapping[str, tuple[Path, list[PreparedPost]]], none_label: str = "None"
) -> list[str]:
    """``"None"`` (if present) then the other relations of the training split (or all splits), sorted."""
    relations = {post.relation for split in _label_source_splits(parsed) for post in parsed[split][1]}
    head = [none_label] if none_label in relations else []
    return head + sorted(relations - {none_label})


def relation_type_signatures(relations: Iterable[str], none_label: str = "None") -> list[list[str]] | None:
    """The ``[head type, tail type]`` pairs that carry a relation in training rows, read from the relation names.

    MNRE's rows give no entity types (``h`` and ``t`` hold a name and a span only), but its relation names spell the
    argument types: ``/per/loc/place_of_birth`` relates a ``per`` head to a ``loc`` tail. The pairs of the
    relations that occur are recorded, not those of the whole label set.

    Args:
        relations: the relation label of every training row.
        none_label: the no-relation label (carries no signature).

    Returns:
        The pairs, sorted, types as ``normalize_entity_type`` spells them; ``None`` when a relation other than
        ``none_label`` is not of the form ``/<head type>/<tail type>/<name>`` (no signature can be read: NER -> RE
        then classifies every pair).
    """
    pairs = set()
    for relation in set(relations) - {none_label}:
        parts = relation.split("/")
        if len(parts) != 4 or parts[0] or not all(parts[1:]):
            return None
        pairs.add((normalize_entity_type(parts[1]), normalize_entity_type(parts[2])))
    return [list(pair) for pair in sorted(pairs)]
