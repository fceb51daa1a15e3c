"""Failures of the node HAProxy uses, under read/write load through HAProxy on both
replicas: a crash (kill -9) and a planned stop (drain in HAProxy, then a graceful stop)."""

import time

from support import NODES, Load, eventually, problems

# How long a drained node may keep sessions before they are cut (see docs/galera.md's
# planned-maintenance procedure): the API replaces a pooled connection 30 s after it was
# opened, when it comes back to the pool or by r2d2's reaper.
DRAIN_WAIT = 45


def _present_on(cluster, node, database, ids):
    found = set()
    for start in range(0, len(ids), 500):
        chunk = ",".join(map(str, ids[start:start + 500]))
        found |= {int(r[0]) for r in cluster.sql(node, f"SELECT id FROM messages WHERE id IN ({chunk})", database)}
    return set(ids) - found


def test_kill_9_of_the_node_haproxy_uses_fails_nothing_and_loses_no_acknowledged_write(cluster, replicas):
    database = replicas[0].database
    victim = cluster.active_node()
    try:
        with Load([api.base for api in replicas]) as load:
            load.wait_for_requests(100)
            killed_at = time.monotonic()
            cluster.kill(victim)
            eventually(lambda: cluster.servers()[f"node{victim}"]["status"].startswith("DOWN"), 10,
                       f"HAProxy to mark node{victim} down")
            marked_down = time.monotonic() - killed_at
            load.wait_for_requests(300)
            time.sleep(3)
        answers = load.snapshot()
        ids = load.created_ids()
        print(f"kill -9 node{victim}: HAProxy marked it down after {marked_down:.1f}s; {load.summary()}")
        missing = {node: _present_on(cluster, node, database, ids) for node in NODES if node != victim}
    finally:
        rejoin_started = time.monotonic()
        cluster.start(victim)
        print(f"node{victim} rejoined and Synced {time.monotonic() - rejoin_started:.1f}s after its restart")
        eventually(lambda: cluster.servers()[f"node{victim}"]["status"] == "UP", 15, f"node{victim} UP in HAProxy")
    missing[victim] = _present_on(cluster, victim, database, ids)
    print(f"{len(ids)} acknowledged creates; missing per node: { {n: len(m) for n, m in missing.items()} }")

    assert len(ids) > 50, load.summary()
    assert not any(missing.values()), f"acknowledged writes missing: {missing}"
    # A create whose commit was on the wire when the node died cannot know its outcome:
    # the documented 504 (the client repeats it with its Idempotency-Key).
    bad = problems(answers, allow_outcome_unknown=True)
    timeline = [f"{a.status} sent {a.started - killed_at:+.2f}s after the kill, took {a.seconds:.2f}s" for a in bad]
    assert not bad, f"{len(bad)} of {len(answers)} answers failed or took over 2 s: {timeline}; {bad[:4]}"
    assert sum(1 for a in answers if a.status == 503) <= len(answers) // 20, load.summary()


def test_planned_stop_of_the_node_haproxy_uses_fails_no_request(cluster, replicas):
    database = replicas[0].database
    victim = cluster.active_node()
    states = {name: row["status"] for name, row in cluster.servers().items()}
    server = f"mysql/node{victim}"
    with Load([api.base for api in replicas]) as load:
        load.wait_for_requests(100)
        # 1. No new connections to the node; established ones stay until their client
        # closes them.
        assert cluster.haproxy(f"set server {server} state drain").strip() == ""
        started = time.monotonic()
        try:
            eventually(lambda: cluster.servers()[f"node{victim}"]["scur"] == "0", DRAIN_WAIT, "")
            moved = f"sessions moved after {time.monotonic() - started:.1f}s"
        except AssertionError:
            # 2. Sessions still there are cut: an idle pooled connection is then replaced
            # through HAProxy, but a commit on the wire at that moment is lost (504).
            left = cluster.servers()[f"node{victim}"]["scur"]
            cluster.haproxy(f"shutdown sessions server {server}")
            moved = f"{left} sessions still open after {DRAIN_WAIT}s, cut"
        load.wait_for_requests(100)
        # 3. The graceful stop.
        cluster.shutdown(victim)
        load.wait_for_requests(200)
        time.sleep(2)
    answers = load.snapshot()
    print(f"planned stop of node{victim} (HAProxy's servers before: {states}): {moved}; {load.summary()}")
    failed = [a for a in answers if not 200 <= a.status < 300]
    ids = load.created_ids()
    try:
        assert not failed, f"{len(failed)} of {len(answers)} requests failed ({moved}): {failed[:8]}"
        assert not [a for a in answers if a.seconds > 2], "answers slower than 2 s"
    finally:
        cluster.start(victim)
        assert cluster.haproxy(f"set server {server} state ready").strip() == ""
    for node in NODES:
        assert not _present_on(cluster, node, database, ids), f"acknowledged writes missing on node{node}"
