"""What a browser and an API client do through nginx's published port, shared by the
checks of the local and the production stack."""

from harness import eventually
from stack import http
from stream import Stream


def page_is_served(url: str):
    page = http("GET", url + "/")
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert b"<script" in page.body


def create_list_edit_and_delete(url: str):
    created = http("POST", url + "/api/messages", {"message": "hello through nginx"})
    assert created.status == 201, created.body
    message = created.json
    listed = http("GET", url + "/api/messages").json
    assert message["id"] in [m["id"] for m in listed["items"]]
    auth = {"Authorization": f"Bearer {message['edit_token']}"}
    edited = http("PATCH", f"{url}/api/messages/{message['id']}", {"message": "edited"}, auth)
    assert edited.status == 200 and edited.json["message"] == "edited"
    assert http("DELETE", f"{url}/api/messages/{message['id']}", headers=auth).status == 204
    assert http("GET", f"{url}/api/messages/{message['id']}").status == 404


def new_message_arrives_on_the_stream(url: str):
    stream = Stream(url)
    try:
        eventually(stream.snapshot, 10, what="the stream's first event")
        created = http("POST", url + "/api/messages", {"message": "live in a container"}).json
        event = eventually(
            lambda: next((e for e in stream.snapshot() if e.event == "created" and e.data["id"] == created["id"]),
                         None),
            10, what="the created message on the stream",
        )
        assert event.data["message"] == "live in a container"
    finally:
        stream.close()


def api_docs_are_served(url: str):
    docs = http("GET", url + "/api/docs/")
    assert docs.status == 200
    assert b"swagger" in docs.body.lower()
    assert http("GET", url + "/api/openapi.json").json["openapi"].startswith("3.")


def metrics_are_refused(url: str):
    answer = http("GET", url + "/metrics")
    assert answer.status == 404
    assert answer.headers["content-type"].startswith("application/problem+json")
