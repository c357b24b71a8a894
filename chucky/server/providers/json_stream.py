"""Incremental decoding of a ``{"text": "..."}`` reply, for streaming it as it is generated.

Theory of operation
-------------------

When tools are offered, the local model's reply is constrained to one JSON object: either
``{"text": <string>}`` or ``{"tool": ..., "arguments": ...}`` (see
:func:`chucky.server.providers.llamacpp.reply_schema`). The grammar built from that schema fixes
the key order (each alternative's keys come in the order the schema lists them, and no other key
is allowed), so the first key tells the alternatives apart. :class:`ReplyTextDecoder` is fed the
generated text piece by piece (pieces split anywhere, even inside an escape) and returns, for
each piece, the part of the string value it could decode:

1. ``PREFIX``: matching ``{`` ``"text"`` ``:`` ``"``, with any JSON whitespace (RFC 8259
   section 2: space, tab, line feed, carriage return) before and between the tokens. Anything
   else means another alternative: ``NOT_TEXT``, and every later piece decodes to ``""``.
2. ``STRING``: the string value. A piece is cut after its last complete character: an escape
   (RFC 8259 section 7) is decoded only once all of it has arrived, and a ``\\uD800``-``\\uDBFF``
   escape is held until the next six characters show whether it starts a surrogate pair. The
   cut-off part is decoded with :func:`json.loads`, the same decoder that would read the whole
   reply, so the decoded pieces concatenate to exactly ``json.loads(reply)["text"]`` (lone
   surrogates included). Raw control characters, which the grammar lets through, are kept
   (``strict=False``).
3. ``DONE``: the closing quote has arrived; the rest of the reply (``}``) decodes to ``""``.

Pure: no I/O, no clock, no model.
"""

from __future__ import annotations

import enum
import json

__all__ = ["ReplyTextDecoder", "ReplyTextState"]

_WHITESPACE = frozenset(" \t\n\r")
_HEX = frozenset("0123456789abcdefABCDEF")
# The prefix of the text alternative, one expected token after another; whitespace may precede
# each of them.
_PREFIX_TOKENS = ("{", '"text"', ":", '"')


class ReplyTextState(enum.Enum):
    """Where :class:`ReplyTextDecoder` is in the reply."""

    PREFIX = "prefix"
    """Before the string value: it is not yet known whether the reply is the text alternative."""
    STRING = "string"
    """Inside the text alternative's string value."""
    DONE = "done"
    """The string value is closed."""
    NOT_TEXT = "not_text"
    """The reply is not the text alternative (a tool call, or something unexpected)."""


class ReplyTextDecoder:
    """Decodes the string value of a ``{"text": "..."}`` reply as the reply arrives.

    ``feed(piece)`` returns the text decoded from ``piece`` (possibly ``""``: an incomplete
    escape is held back until the next piece completes it). Once the reply is known to be the
    text alternative, :attr:`is_text` is true; the pieces returned by every ``feed`` concatenate
    to the string value as :func:`json.loads` decodes it.
    """

    def __init__(self) -> None:
        self._state = ReplyTextState.PREFIX
        self._token = 0  # index in _PREFIX_TOKENS
        self._matched = 0  # characters of that token matched so far
        self._pending = ""  # undecoded characters of the string value

    @property
    def state(self) -> ReplyTextState:
        return self._state

    @property
    def is_text(self) -> bool:
        """Whether the reply is the text alternative (its string value has started)."""
        return self._state in (ReplyTextState.STRING, ReplyTextState.DONE)

    def feed(self, piece: str) -> str:
        """Decode the next piece of the reply.

        Returns:
            The text of the string value decoded so far and not returned before.
        """
        if self._state is ReplyTextState.PREFIX:
            piece = self._match_prefix(piece)
        if self._state is not ReplyTextState.STRING or not piece:
            return ""
        self._pending += piece
        return self._decode()

    def _match_prefix(self, piece: str) -> str:
        """Consume the prefix from ``piece``; return what follows it (the string value)."""
        for index, char in enumerate(piece):
            token = _PREFIX_TOKENS[self._token]
            if self._matched == 0 and char in _WHITESPACE:
                continue
            if char != token[self._matched]:
                self._state = ReplyTextState.NOT_TEXT
                return ""
            self._matched += 1
            if self._matched == len(token):
                self._token += 1
                self._matched = 0
                if self._token == len(_PREFIX_TOKENS):
                    self._state = ReplyTextState.STRING
                    return piece[index + 1 :]
        return ""

    def _decode(self) -> str:
        pending = self._pending
        end = len(pending)
        cut = 0  # pending[:cut] is complete and decodable on its own
        closed = False
        i = 0
        while i < end:
            char = pending[i]
            if char == '"':
                closed = True
                cut = i
                break
            if char != "\\":
                i += 1
                cut = i
                continue
            if i + 1 >= end:
                break  # the escape's second character is still to come
            if pending[i + 1] != "u":
                i += 2
                cut = i
                continue
            if i + 6 > end:
                break  # \uXXXX incomplete
            code = _hex4(pending, i + 2)
            i += 6
            if code is not None and 0xD800 <= code <= 0xDBFF:
                # A high surrogate pairs with a following \uDC00-\uDFFF escape (as json.loads
                # does); wait until the next six characters decide.
                follow = pending[i : i + 6]
                if len(follow) < 6 and _could_be_escape_prefix(follow):
                    break
                low = _hex4(pending, i + 2) if follow.startswith("\\u") else None
                if low is not None and 0xDC00 <= low <= 0xDFFF:
                    i += 6
            cut = i
        text = _loads_fragment(pending[:cut])
        if closed:
            self._state = ReplyTextState.DONE
            self._pending = ""
        else:
            self._pending = pending[cut:]
        return text


def _hex4(text: str, start: int) -> int | None:
    digits = text[start : start + 4]
    if len(digits) != 4 or not all(c in _HEX for c in digits):
        return None
    return int(digits, 16)


def _could_be_escape_prefix(text: str) -> bool:
    """Whether ``text`` (up to six characters) may still grow into ``\\uXXXX``."""
    pattern = "\\u"
    head = text[:2]
    if head != pattern[: len(head)]:
        return False
    return all(c in _HEX for c in text[2:])


def _loads_fragment(fragment: str) -> str:
    if "\\" not in fragment:
        return fragment
    try:
        value = json.loads(f'"{fragment}"', strict=False)
    except json.JSONDecodeError:
        return fragment  # an escape the grammar does not allow: kept as generated
    return str(value)
