"""Sessions and their transcripts."""

from __future__ import annotations

from typing import Any

import pytest

from chucky.errors import SessionNotFoundError
from chucky.server.sql import SqlStore
from chucky.server.store import SessionRecord

NOW = 1_800_000_000.0


async def _reloaded(store: SqlStore, record: SessionRecord) -> SessionRecord:
    loaded = await store.get_session(record.session_id, record.project_id, record.user_id)
    assert loaded is not None
    return loaded


async def test_create_then_get_only_for_its_owner(store: SqlStore) -> None:
    record = await store.create_session("proj_a", "alice", "claude-x", NOW)
    assert (record.persisted, record.rewritten, record.transcript) == (0, False, [])
    loaded = await _reloaded(store, record)
    assert loaded == record
    assert await store.get_session(record.session_id, "proj_a", "bob") is None
    assert await store.get_session(record.session_id, "proj_b", "alice") is None
    assert await store.get_session("no-such-session", "proj_a", "alice") is None


async def test_create_with_a_given_id(store: SqlStore) -> None:
    record = await store.create_session("proj_a", "alice", "m", NOW, session_id="sess-1")
    assert record.session_id == "sess-1"
    assert (await _reloaded(store, record)).session_id == "sess-1"


async def test_latest_is_the_most_recently_active(store: SqlStore) -> None:
    assert await store.latest_session("proj_a", "alice") is None
    older = await store.create_session("proj_a", "alice", "m", NOW)
    newer = await store.create_session("proj_a", "alice", "m", NOW + 10)
    await store.create_session("proj_a", "bob", "m", NOW + 20)
    await store.create_session("proj_b", "alice", "m", NOW + 30)
    latest = await store.latest_session("proj_a", "alice")
    assert latest is not None
    assert latest.session_id == newer.session_id
    older.last_activity_at = NOW + 15
    older.append("user", "back again")
    await store.save_session(older)
    latest = await store.latest_session("proj_a", "alice")
    assert latest is not None
    assert latest.session_id == older.session_id
    assert latest.transcript == older.transcript


async def test_save_writes_new_messages_and_the_session_fields(store: SqlStore) -> None:
    record = await store.create_session("proj_a", "alice", "m1", NOW)
    first = record.append("user", "hello")
    record.append("assistant", [{"type": "text", "text": "hi"}])
    await store.save_session(record)
    assert record.persisted == 2
    record.append("user", "more", message_uuid="given-uuid")
    record.model = "m2"
    record.state = "running"
    record.spent_microdollars = 12_345_678_901
    record.last_activity_at = NOW + 5
    await store.save_session(record)
    assert (record.persisted, record.rewritten) == (3, False)

    loaded = await _reloaded(store, record)
    assert loaded.transcript == record.transcript
    assert loaded.transcript[0]["uuid"] == first
    assert loaded.transcript[2]["uuid"] == "given-uuid"
    assert (loaded.model, loaded.state, loaded.spent_microdollars, loaded.last_activity_at) == (
        "m2",
        "running",
        12_345_678_901,
        NOW + 5,
    )
    assert loaded.persisted == 3
    assert loaded.model_messages() == [{"role": "user", "content": "hello"}] + [
        {"role": m["role"], "content": m["content"]} for m in record.transcript[1:]
    ]
    # Saving with nothing new writes nothing twice.
    await store.save_session(record)
    assert (await _reloaded(store, record)).transcript == record.transcript


async def test_save_after_a_rewrite_replaces_the_transcript(store: SqlStore) -> None:
    record = await store.create_session("proj_a", "alice", "m", NOW)
    for i in range(5):
        record.append("user" if i % 2 == 0 else "assistant", f"message {i}")
    await store.save_session(record)
    record.replace_transcript([dict(m) for m in record.transcript[:2]])
    assert record.rewritten
    await store.save_session(record)
    assert (record.persisted, record.rewritten) == (2, False)
    loaded = await _reloaded(store, record)
    assert [m["content"] for m in loaded.transcript] == ["message 0", "message 1"]
    record.append("user", "after the cut")
    await store.save_session(record)
    loaded = await _reloaded(store, record)
    assert [m["content"] for m in loaded.transcript] == ["message 0", "message 1", "after the cut"]


@pytest.mark.parametrize(
    "content",
    [
        "lone surrogate \udc00 and \ud800 here",
        "a NUL \x00 byte, and \x01 control",
        "non-ASCII: héllo 你好 🎉",
        [{"type": "text", "text": "block with \udfff and \x00 and 🎉"}],
        [
            {"type": "text", "text": "what is this?"},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
            },
            {"type": "tool_use", "id": "t1", "name": "calc", "input": {"x": [1, 2.5, None, True]}},
            {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": ""}]},
        ],
        "",
        [],
    ],
    ids=["surrogates", "nul", "unicode", "blocks-escapes", "multimodal", "empty", "no-blocks"],
)
async def test_content_round_trips(store: SqlStore, content: Any) -> None:
    record = await store.create_session("proj_a", "alice", "m", NOW)
    record.append("user", content)
    await store.save_session(record)
    assert (await _reloaded(store, record)).transcript[0]["content"] == content


async def test_five_hundred_messages_keep_their_order(store: SqlStore) -> None:
    record = await store.create_session("proj_a", "alice", "m", NOW)
    for chunk in range(5):
        for i in range(100):
            n = chunk * 100 + i
            record.append("user" if n % 2 == 0 else "assistant", f"message {n}")
        await store.save_session(record)
    loaded = await _reloaded(store, record)
    assert [m["content"] for m in loaded.transcript] == [f"message {n}" for n in range(500)]
    assert [m["uuid"] for m in loaded.transcript] == [m["uuid"] for m in record.transcript]


async def test_saving_an_unknown_session_is_refused(store: SqlStore) -> None:
    record = SessionRecord(
        session_id="never-created",
        project_id="proj_a",
        user_id="alice",
        model="m",
        created_at=NOW,
        last_activity_at=NOW,
    )
    record.append("user", "hi")
    with pytest.raises(SessionNotFoundError):
        await store.save_session(record)
    assert record.persisted == 0
