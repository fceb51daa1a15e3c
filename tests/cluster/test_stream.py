"""The live stream on two replicas through HAProxy: every change exactly once on both, and
a resume with Last-Event-ID replays exactly what was missed."""

import time
from collections import Counter

from support import Stream, create, eventually, request


def _changes(replicas, count, tag):
    """Creates, edits and deletes messages through the replicas in turn; returns the
    (event, id) of every change."""
    expected = []
    made = []
    for n in range(count):
        created = create(replicas[n % 2].base, f"{tag} {n}")
        made.append(created)
        expected.append(("created", created["id"]))
    for n, message in enumerate(made[: count // 2]):
        base = replicas[(n + 1) % 2].base
        answer = request("PATCH", f"{base}/api/messages/{message['id']}", {"message": f"{tag} edited {n}"},
                         headers={"Authorization": f"Bearer {message['edit_token']}"})
        assert answer.status == 200, answer
        expected.append(("updated", message["id"]))
    for n, message in enumerate(made[-(count // 4):]):
        base = replicas[n % 2].base
        answer = request("DELETE", f"{base}/api/messages/{message['id']}",
                         headers={"Authorization": f"Bearer {message['edit_token']}"})
        assert answer.status == 204, answer
        expected.append(("deleted", message["id"]))
    return expected


def _ready(stream):
    eventually(lambda: any(e.event == "ready" for e in stream.snapshot()), 10, "the stream's ready event")


def _received_exactly(streams, expected):
    want = Counter(expected)
    for stream in streams:
        try:
            eventually(lambda s=stream: len(s.changes()) >= len(expected), 15, "")
        except AssertionError:
            got = Counter(stream.changes())
            raise AssertionError(f"a stream received {len(stream.changes())} of {len(expected)} changes; "
                                 f"missing {dict(want - got)}; events {stream.snapshot()[:40]}") from None
    time.sleep(1)  # anything arriving late would be a duplicate
    for stream in streams:
        got = Counter(stream.changes())
        duplicates = {k: v for k, v in got.items() if v > 1}
        missing = want - got
        extra = got - want
        assert not duplicates and not missing and not extra, \
            f"duplicates {duplicates}, missing {dict(missing)}, unexpected {dict(extra)}"


def test_a_change_through_either_replica_reaches_both_streams_exactly_once(replicas):
    streams = [Stream(api.base) for api in replicas]
    try:
        for stream in streams:
            _ready(stream)
        expected = _changes(replicas, 24, "live")
        _received_exactly(streams, expected)
    finally:
        for stream in streams:
            stream.close()


def test_resuming_with_last_event_id_replays_exactly_what_was_missed(replicas):
    first = Stream(replicas[0].base)
    _ready(first)
    seen = _changes(replicas, 4, "before")
    _received_exactly([first], seen)
    last = first.last_id()
    first.close()

    missed = _changes(replicas, 12, "while away")
    # A replay sends each message as it is now: one deleted while the client was away
    # comes as its `deleted` event alone (there is nothing left to create or update).
    deleted = {message_id for event, message_id in missed if event == "deleted"}
    missed = [(event, message_id) for event, message_id in missed
              if event == "deleted" or message_id not in deleted]

    resumed = [Stream(api.base, last_event_id=last) for api in replicas]
    try:
        _received_exactly(resumed, missed)
        for stream in resumed:
            assert not [e for e in stream.snapshot() if e.event == "reset"], "the resume was refused (reset)"
        # The resumed streams go on live.
        after = _changes(replicas, 4, "after")
        _received_exactly(resumed, missed + after)
    finally:
        for stream in resumed:
            stream.close()
