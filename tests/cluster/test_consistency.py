"""Read-your-writes across nodes, and concurrent edits of one message on two nodes."""

import threading

from support import CLIENT_TIMEOUT, StallWatch, create, problems, request

ROUNDS_READ = 200
ROUNDS_EDIT = 200
# An edit retries a collision a few times (10-40 ms apart) and then answers: on two busy
# shared cores the slowest seen is well under a second.
EDIT_SLOWEST = 2.0


def test_a_message_created_through_one_node_is_read_at_once_through_another(cluster, start_api):
    database = cluster.create_database()
    writer = start_api(cluster.url(1, database), "writer-node1").wait_ready()
    reader = start_api(cluster.url(2, database), "reader-node2").wait_ready()
    misses = []
    for n in range(ROUNDS_READ):
        created = create(writer.base, f"read your writes {n}")
        answer = request("GET", f"{reader.base}/api/messages/{created['id']}")
        if answer.status != 200 or answer.body["message"] != created["message"]:
            misses.append(answer)
        # And the edit: the other node sees the new text at once.
        edited = request("PATCH", f"{writer.base}/api/messages/{created['id']}", {"message": f"edited {n}"},
                         headers={"Authorization": f"Bearer {created['edit_token']}"})
        assert edited.status == 200, edited
        answer = request("GET", f"{reader.base}/api/messages/{created['id']}")
        if answer.status != 200 or answer.body["message"] != f"edited {n}":
            misses.append(answer)
    assert not misses, f"{len(misses)} of {2 * ROUNDS_READ} reads on node2 missed a write acknowledged " \
                       f"on node1: {misses[:5]}"


def test_concurrent_edits_of_one_message_on_two_nodes_are_answered_at_once(cluster, start_api, run_dir):
    database = cluster.create_database()
    first = start_api(cluster.url(1, database), "editor-node1").wait_ready()
    second = start_api(cluster.url(2, database), "editor-node2").wait_ready()
    created = create(first.base, "edited from two nodes at once")
    auth = {"Authorization": f"Bearer {created['edit_token']}"}
    url = f"/api/messages/{created['id']}"
    answers = []
    lock = threading.Lock()

    with StallWatch(cluster, run_dir / "concurrent-edits-stall.txt", nodes=(1, 2)) as watch:
        for n in range(ROUNDS_EDIT):
            barrier = threading.Barrier(4)

            def edit(base, text):
                barrier.wait()
                with watch.request():
                    answer = request("PATCH", base + url, {"message": text}, headers=auth)
                with lock:
                    answers.append(answer)

            threads = [threading.Thread(target=edit, args=(api.base, f"{api.name} round {n} #{k}"))
                       for api in (first, second) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(CLIENT_TIMEOUT + 5)

    statuses = {}
    for a in answers:
        statuses[a.status] = statuses.get(a.status, 0) + 1
    slowest = max(a.seconds for a in answers)
    retried = sum(api.metric("db_retries_total") for api in (first, second))
    print(f"concurrent edits: {len(answers)} answers, statuses {dict(sorted(statuses.items()))}, "
          f"slowest {slowest:.3f}s; {retried:.0f} collisions retried")
    # Each edit is answered at once: 200, or when it kept colliding with the other node's
    # edits, the documented 503 (problem+json, Retry-After). Never a 500, never the request's
    # time limit: an edit that waits for a lock its own node holds is a bug.
    bad = problems(answers, slowest=EDIT_SLOWEST)
    assert not bad, f"{len(bad)} of {len(answers)} edits broke the contract: {bad[:5]}{watch.evidence()}"
    assert statuses.get(200, 0) >= len(answers) * 0.9, f"too few edits succeeded: {statuses}"

    # Every node ends with the same text, one of the accepted edits.
    texts = {node: cluster.sql(node, f"SELECT message FROM messages WHERE id = {created['id']}", database)
             for node in (1, 2, 3)}
    assert len({str(t) for t in texts.values()}) == 1, texts
    accepted = {a.body["message"] for a in answers if a.status == 200}
    assert texts[1][0][0] in accepted
