"""The incremental decoder of a ``{"text": "..."}`` reply (pure: no model)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from chucky.server.providers.json_stream import ReplyTextDecoder, ReplyTextState

REPLIES = [
    '{"text": "Hello, world!"}',
    '{"text":""}',
    '{ "text" : "spaced" } ',
    '\n{\n  "text":\t"whitespace everywhere"\r\n}',
    r'{"text": "line\nbreak, tab\t, quote \" and backslash \\ and slash \/"}',
    r'{"text": "\b\f\r controls"}',
    r'{"text": "caf\u00e9 \u00E9 \u4e2d"}',
    r'{"text": "pair \ud83d\ude00 done"}',
    r'{"text": "\ud83d\ude00"}',
    r'{"text": "lone high \ud800 then text"}',
    r'{"text": "lone high at end \ud800"}',
    r'{"text": "high then other escape \ud800\u0041"}',
    r'{"text": "high then high \ud800\ud83d\ude00"}',
    r'{"text": "high then newline \ud800\n"}',
    r'{"text": "lone low \udc00 x"}',
    r'{"text": "\\u0041 is not an escape"}',
    '{"text": "raw\ncontrol"}',
    '{"text": "émoji 😀 and 中文"}',
    r'{"text": "\\\\\\\" end"}',
]


def _decode(pieces: Sequence[str]) -> tuple[str, ReplyTextDecoder]:
    decoder = ReplyTextDecoder()
    return "".join(decoder.feed(piece) for piece in pieces), decoder


def _expected(reply: str) -> str:
    value = json.loads(reply, strict=False)["text"]
    assert isinstance(value, str)
    return value


@pytest.mark.parametrize("reply", REPLIES)
def test_every_split_decodes_to_what_json_loads_reads(reply: str) -> None:
    expected = _expected(reply)
    for cut in range(len(reply) + 1):
        text, decoder = _decode([reply[:cut], reply[cut:]])
        assert text == expected, (cut, reply[:cut])
        assert decoder.state is ReplyTextState.DONE


@pytest.mark.parametrize("reply", REPLIES)
def test_every_pair_of_splits_decodes_the_same(reply: str) -> None:
    expected = _expected(reply)
    for first in range(len(reply) + 1):
        for second in range(first, len(reply) + 1):
            text, _ = _decode([reply[:first], reply[first:second], reply[second:]])
            assert text == expected, (first, second)


@pytest.mark.parametrize("reply", REPLIES)
def test_one_character_at_a_time(reply: str) -> None:
    text, decoder = _decode(list(reply))
    assert text == _expected(reply)
    assert decoder.is_text


def test_text_streams_before_the_reply_is_complete() -> None:
    decoder = ReplyTextDecoder()
    assert decoder.feed('{"te') == ""
    assert decoder.state is ReplyTextState.PREFIX
    assert decoder.feed('xt": "Hel') == "Hel"
    assert decoder.is_text
    assert decoder.feed("lo\\") == "lo"  # the escape waits for its second character
    assert decoder.feed("n wor") == "\n wor"
    assert decoder.feed("ld \\u00") == "ld "
    assert decoder.feed("e9") == "é"
    assert decoder.feed("\\ud83d") == ""  # a high surrogate waits for its pair
    assert decoder.feed("\\ude00") == "😀"
    assert decoder.feed('"}') == ""
    assert decoder.state is ReplyTextState.DONE
    assert decoder.feed(" trailing") == ""


@pytest.mark.parametrize(
    "reply",
    [
        '{"tool": "mcp__weather__get_weather", "arguments": {"city": "Paris"}}',
        '{"texts": "x"}',
        '{"text": 1}',
        '["text"]',
        "plain words",
        '{ "tool" : "x"}',
    ],
)
def test_other_replies_are_not_text(reply: str) -> None:
    for cut in range(len(reply) + 1):
        text, decoder = _decode([reply[:cut], reply[cut:]])
        assert text == ""
        assert decoder.state is ReplyTextState.NOT_TEXT
        assert not decoder.is_text


def test_a_cut_reply_yields_what_was_complete() -> None:
    text, decoder = _decode(['{"text": "Once upon a ti', "me \\u00"])
    assert text == "Once upon a time "
    assert decoder.state is ReplyTextState.STRING


def test_an_escape_the_grammar_forbids_is_kept_as_generated() -> None:
    text, _ = _decode(['{"text": "bad \\x escape"}'])
    assert text == "bad \\x escape"
