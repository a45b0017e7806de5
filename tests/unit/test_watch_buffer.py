"""The pieces of the live stream that need no database: a connection's coalescing buffer, the
hub's fan-out by (owner, id), and the client's URL and version rules."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sessionflow.client.watch import newer, websocket_url
from sessionflow.protocol import SessionStatus
from sessionflow.server.live import LiveHub, LiveState, Subscription


def decode(messages: list[str]) -> list[dict[str, Any]]:
    return [json.loads(m) for m in messages]


def answered(sub: Subscription, ids: list[str], rows: dict[str, LiveState]) -> None:
    for sid in ids:
        sub.expect(sid)
    sub.add_snapshot(ids, rows)
    sub.take_messages()


def test_buffer_keeps_one_state_per_id_however_many_changes_arrive() -> None:
    sub = Subscription("alice")
    answered(sub, ["s1"], {"s1": LiveState(1, "queued", "pending")})
    for version in range(2, 10_002):
        sub.offer("s1", LiveState(version, "parsing", "pending"))
    assert len(sub._buffer) == 1
    [message] = decode(sub.take_messages())
    assert message["statuses"] == {
        "s1": {"lifecycle": "parsing", "parse_status": "pending", "version": 10_001}
    }


def test_buffer_drops_a_state_older_than_what_was_sent_or_held() -> None:
    sub = Subscription("alice")
    answered(sub, ["s1"], {"s1": LiveState(5, "parsing", "pending")})
    sub.offer("s1", LiveState(4, "downloading", "pending"))
    assert sub.take_messages() == []
    sub.offer("s1", LiveState(7, "summarized", "ok"))
    sub.offer("s1", LiveState(6, "summarizing", "ok"))
    [message] = decode(sub.take_messages())
    assert message["statuses"]["s1"]["version"] == 7


def test_deltas_wait_for_the_snapshot_which_takes_the_newest_state() -> None:
    sub = Subscription("alice")
    sub.expect("s1")
    sub.expect("s2")
    # Changes committed while the snapshot is being read arrive first...
    sub.offer("s1", LiveState(9, "parsed", "ok"))
    sub.offer("s2", LiveState(3, "downloading", "pending"))
    assert sub.take_messages() == []
    # ...and the snapshot (read a moment later, or earlier) is merged with them by version.
    sub.add_snapshot(
        ["s1", "s2", "s3"],
        {"s1": LiveState(8, "parsing", "pending"), "s2": LiveState(4, "parsing", "pending")},
    )
    [snapshot] = decode(sub.take_messages())
    assert snapshot["statuses"]["s1"]["version"] == 9
    assert snapshot["statuses"]["s2"]["version"] == 4
    assert snapshot["not_found"] == ["s3"]
    assert sub.take_messages() == []


def test_a_session_created_after_a_not_found_snapshot_is_sent_as_a_delta() -> None:
    sub = Subscription("alice")
    answered(sub, ["later"], {})
    sub.offer("later", LiveState(1, "queued", "pending"))
    [delta] = decode(sub.take_messages())
    assert delta == {
        "type": "statuses",
        "statuses": {"later": {"lifecycle": "queued", "parse_status": "pending", "version": 1}},
        "not_found": [],
    }


def test_deltas_are_sent_in_messages_of_at_most_500_ids() -> None:
    sub = Subscription("alice")
    ids = [f"s{i}" for i in range(1200)]
    answered(sub, ids, {})
    for n, sid in enumerate(ids):
        sub.offer(sid, LiveState(n + 1, "queued", "pending"))
    messages = decode(sub.take_messages())
    assert [len(m["statuses"]) for m in messages] == [500, 500, 200]


async def test_hub_delivers_only_to_subscriptions_of_that_owner_and_id() -> None:
    hub = LiveHub("postgresql://unused", pool=None, ping_interval=1, connect_timeout=1)  # type: ignore[arg-type]
    alice, bob = hub.subscribe("alice"), hub.subscribe("bob")
    hub.register(alice, ["s1"])
    hub.register(bob, ["s1"])
    alice.add_snapshot(["s1"], {})
    bob.add_snapshot(["s1"], {})
    alice.take_messages()
    bob.take_messages()
    hub._dispatch(
        json.dumps(
            {
                "owner": "alice",
                "id": "s1",
                "lifecycle": "queued",
                "parse_status": "pending",
                "version": 1,
            }
        )
    )
    hub._dispatch("not json")  # logged and ignored
    assert len(alice.take_messages()) == 1
    assert bob.take_messages() == []
    hub.unsubscribe(alice)
    hub.unsubscribe(bob)
    assert hub._index == {}


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/api/sessions/watch"),
        ("https://sf.example.com/", "wss://sf.example.com/api/sessions/watch"),
        ("https://sf.example.com/prefix/", "wss://sf.example.com/prefix/api/sessions/watch"),
        ("HTTP://host", "ws://host/api/sessions/watch"),
    ],
)
def test_websocket_url_turns_http_into_ws(base: str, expected: str) -> None:
    assert websocket_url(base) == expected


@pytest.mark.parametrize("base", ["ftp://host", "host:8000", "http://"])
def test_websocket_url_refuses_what_is_not_http(base: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        websocket_url(base)


def test_newer_compares_versions_and_takes_anything_over_nothing() -> None:
    old = SessionStatus(lifecycle="queued", parse_status="pending", version=3)
    new = SessionStatus(lifecycle="parsing", parse_status="pending", version=4)
    assert newer(None, old)
    assert newer(old, new)
    assert not newer(new, old)
    assert not newer(new, new)
