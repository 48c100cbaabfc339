"""
The query rule of object extraction (see `object_extraction_mmib`): which text queries a post's image is searched
with. `"post"`: the post's content words (the paper's rule without a part-of-speech tagger); `"categories"`: a fixed
list; `"all"`: every class of a closed-set detector; or a callable.

The `"post"` rule: from the post's words, @mentions, URLs, `RT`, words of a small built-in English stop-word list,
pure numbers and tokens without a letter or digit are left out; `#hashtag` keeps its text without `#`; surrounding
punctuation is stripped. A run of adjacent capitalised words becomes one query (`Kevin Durant`), because a name is
one object. For a relation the head and tail entity texts come first (without `@`/`#`). Queries are deduplicated
case-insensitively in order and capped at `max_queries`.

Travels with checkpoints as remote code: it imports only the standard library.
"""

import re
from collections.abc import Callable, Sequence

__all__ = ["QUERY_RULES", "STOP_WORDS", "post_queries", "rule_queries"]

QUERY_RULES = ("post", "categories", "all")

# Function words of English tweets; content words are what is left. Small on purpose: a noun that is also listed
# here ("will", "may") is rare as a visual object.
STOP_WORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off
    on once only or other our ours ourselves out over own same she should so some such than that the their theirs
    them themselves then there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours yourself yourselves rt via amp im dont cant wont get got
    gets one two lol omg u ur r thanks thank today tonight
    """.split()
)
_URL = re.compile(r"^(https?://|www\.)", re.IGNORECASE)
_EDGE_PUNCTUATION = re.compile(r"^[^\w#@]+|[^\w]+$")
_HAS_WORD_CHARACTER = re.compile(r"[^\W_]")


def _clean_word(word: str) -> str:
    """A word without surrounding punctuation, `#` or `@`; empty for a URL."""
    word = word.strip()
    if _URL.match(word):
        return ""
    return _EDGE_PUNCTUATION.sub("", word).lstrip("#@")


def _is_content_word(word: str, cleaned: str) -> bool:
    if word.startswith("@") or _URL.match(word) or not _HAS_WORD_CHARACTER.search(cleaned):
        return False
    if cleaned.replace(",", "").replace(".", "").isdigit():
        return False
    return cleaned.lower() not in STOP_WORDS and len(cleaned) > 1


def _span_text(words: Sequence[str], span: Sequence[int] | None) -> str:
    if span is None:
        return ""
    return " ".join(cleaned for cleaned in (_clean_word(word) for word in words[span[0] : span[1]]) if cleaned)


def post_queries(
    words: Sequence[str] | str,
    head_span: Sequence[int] | None = None,
    tail_span: Sequence[int] | None = None,
    max_queries: int = 16,
) -> list[str]:
    """
    Queries of one post by the `"post"` rule (see the module docstring).

    Args:
        words (`list[str]` or `str`): the post's words (a string is split on whitespace).
        head_span, tail_span (`[start, end)`, *optional*): word offsets of a relation's entities; their texts come
            first.
        max_queries (`int`, *optional*, defaults to 16): at most this many queries.

    Returns:
        `list[str]`: the queries in order, deduplicated case-insensitively.
    """
    if isinstance(words, str):
        words = words.split()
    candidates = [_span_text(words, head_span), _span_text(words, tail_span)]
    run: list[str] = []
    for word in list(words) + [""]:
        cleaned = _clean_word(word)
        if word and _is_content_word(word, cleaned) and cleaned[0].isupper() and not word.startswith("#"):
            run.append(cleaned)
            continue
        if run:
            candidates.append(" ".join(run))
            run = []
        if word and _is_content_word(word, cleaned):
            candidates.append(cleaned)
    queries, seen = [], set()
    for query in candidates:
        if query and query.lower() not in seen:
            seen.add(query.lower())
            queries.append(query)
    return queries[:max_queries]


def rule_queries(
    query_rule: str | Callable[..., list[str]],
    categories: Sequence[str] | None,
    max_queries: int,
    words: Sequence[str] | str | None,
    head_span: Sequence[int] | None = None,
    tail_span: Sequence[int] | None = None,
) -> list[str]:
    """The queries of one post by `query_rule` (empty list: no query; `"all"`: every class, so no query either)."""
    if query_rule == "all":
        return []
    if query_rule == "categories":
        return list(categories or [])
    if callable(query_rule):
        return [str(query) for query in query_rule(words, head_span, tail_span)]
    return post_queries(words or [], head_span, tail_span, max_queries)
