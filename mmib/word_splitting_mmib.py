"""
Raw tweet -> words with character offsets, in the word conventions of the Twitter-2015/2017 NER data.

This file travels with checkpoints as remote code (the prediction pipeline uses it): standard library only.

The conventions, read off the training data: white space separates words; URLs (also truncated ones such as
`http…`), @mentions, #hashtags, `&amp`-style entities, emoticons (`:)`, `:-(`, `:D`), numbers with separators
(`10,000`, `2.99`, `2-1`, `21,`) and words joined by `-`, `/` or `&` stay whole; every other non-word character
is a word of its own (so `Trump's` -> `Trump`, `'`, `s`, and each emoji code point, variation selector and skin
tone is its own word, as in Twitter-2017), except runs of `.` or `-` (`...`, `--`), which stay together.
"""

import re

__all__ = ["split_words"]

_TOKEN = re.compile(
    r"""
    https?(?::|…)\S*                      # URL, also cut short by the tweet's truncation: http://t.co/x, http…
    | www\.\S+ | //\S+                   # also the tail of a URL split at its ':' by an earlier tokenizer
    | h(?:t|tt|ttps?)?…                   # URL cut right after its first letters
    | [@#]\w+(?:[#@]\w+)*                # @mention, #hashtag, also run together: #nyc#love
    | -*&[A-Za-z]+                        # HTML entity left by scrapers: &amp, arrow --&gt (';' is a word)
    | [Ww]/(?!\w)                         # w/ (with)
    | \w+@\w+                             # e-mail user@host, RT@name
    | (?<!\S)[:;=8][-o^]?[()DPpO/\\|\[\]](?!\S)  # emoticon standing alone
    | \d+(?:[.,:/-]\d+)*(?:,(?=\s|$))?(?![\w-])  # number: 10,000  2.99  2-1  9/11, and the data's "21," before a space
    | \w+(?:(?:-+|[/&])\w+)*              # word, also joined by - -- / &: 19-year, bath--and, AT&T
    | \.{2,}|-{2,}                        # ... and -- stay together
    | \S                                  # any other character: punctuation, emoji, variation selector
    """,
    re.VERBOSE,
)


def split_words(text: str) -> list[tuple[str, int, int]]:
    """
    Splits a raw post into words.

    Args:
        text (`str`): the post as typed.

    Returns:
        `list[tuple[str, int, int]]`: `(word, start, end)` per word with `word == text[start:end]`.
    """
    return [(match.group(), match.start(), match.end()) for match in _TOKEN.finditer(text)]
