"""Paths that stay where they are sent: no dot segments, raw or percent-encoded.

A path is joined to `api.base_url` (or, in the proxy, forwarded to it); a
`..` segment would let it climb out of the base URL's path on the server or
on any proxy in between (`/lemondata/../admin`), and servers differ in what
they decode first, so every decoding of the path is checked.
"""

from __future__ import annotations

from urllib.parse import unquote

_DOT_SEGMENTS = frozenset({".", ".."})
# `%252e` decodes to `%2e`, then to `.`: enough rounds for any chain of decoders.
_DECODING_ROUNDS = 4


def dot_segment_problem(path: str) -> str | None:
    """Why `path` (the path part of a URL, a query after `?` is ignored) must not be
    sent, or None. Refused: `.` and `..` segments (also `..;param`), in any mix of
    raw and percent-encoded dots and slashes, and backslashes, which some servers
    read as slashes."""
    text = path.split("?", 1)[0].split("#", 1)[0]
    for _ in range(_DECODING_ROUNDS):
        if "\\" in text:
            return "must not contain a backslash (raw or percent-encoded)"
        for segment in text.split("/"):
            if segment.split(";", 1)[0] in _DOT_SEGMENTS:
                return "must not contain . or .. segments (raw or percent-encoded)"
        decoded = unquote(text, errors="surrogateescape")
        if decoded == text:
            return None
        text = decoded
    return "is percent-encoded too many times"


def check_no_dot_segments(path: str) -> str:
    """`path` itself; ValueError naming the problem if it has dot segments."""
    problem = dot_segment_problem(path)
    if problem is not None:
        raise ValueError(problem)
    return path
