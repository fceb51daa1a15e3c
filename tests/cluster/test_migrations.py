"""Two replicas that start at once against different nodes migrate a fresh database once."""

from support import NODES, eventually, request


def test_two_replicas_on_different_nodes_migrate_a_fresh_database_exactly_once(cluster, start_api):
    database = cluster.create_database()
    # Started together, each straight to its own node (not through HAProxy): a node-local
    # lock (GET_LOCK) would let both migrate.
    first = start_api(cluster.url(1, database), "replica-node1")
    second = start_api(cluster.url(2, database), "replica-node2")
    first.wait_ready()
    second.wait_ready()

    for node in NODES:
        versions = [row[0] for row in cluster.sql(node, "SELECT version FROM __diesel_schema_migrations", database)]
        assert versions, f"node{node} has no migrations recorded"
        assert len(versions) == len(set(versions)), f"node{node} recorded a migration twice: {versions}"
    expected = sorted(row[0] for row in cluster.sql(1, "SELECT version FROM __diesel_schema_migrations", database))
    for node in NODES:
        assert sorted(row[0] for row in cluster.sql(node, "SELECT version FROM __diesel_schema_migrations",
                                                    database)) == expected

    # Exactly one replica logged migrations as applied, and it applied every one of them.
    applied = [(api.name, line["applied"]) for api in (first, second) for line in api.log_lines()
               if line.get("message") == "applied database migrations"]
    assert len(applied) == 1, f"expected one replica to apply the migrations, logs say: {applied}"
    assert all(version.replace("-", "")[:14] in applied[0][1] for version in expected), applied

    # Both serve the same data: a write through one is read through the other.
    created = eventually(lambda: _create(first.base), 10, "a create through the first replica")
    assert _get(second.base, created["id"]) == 200


def _create(base):
    answer = request("POST", base + "/api/messages", {"message": "after the migration race"})
    return answer.body if answer.status == 201 else None


def _get(base, message_id):
    return request("GET", f"{base}/api/messages/{message_id}").status
