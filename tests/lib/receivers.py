"""Where the test Alertmanager's notifications arrive: a real SMTP server (aiosmtpd) and a
real HTTP listener taking Slack's incoming-webhook JSON, both on local ports, each keeping
what it received in order."""

import email
import email.policy
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller


@dataclass
class Notification:
    """One notification as a person reads it: its title and its text, and when it arrived
    (time.monotonic())."""

    via: str
    title: str
    text: str
    at: float


class SmtpReceiver:
    """aiosmtpd's SMTP server in a thread; keeps each mail's recipients, subject and text."""

    def __init__(self, port):
        self.mails = []
        self._lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=port)
        self.smarthost = f"127.0.0.1:{port}"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        with self._lock:
            self.mails.append({"at": time.monotonic(), "from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                               "subject": str(message["Subject"]), "text": body.get_content() if body else ""})
        return "250 Message accepted for delivery"

    def notifications(self):
        with self._lock:
            return [Notification("email", m["subject"], m["text"], m["at"]) for m in self.mails]

    def start(self):
        self.controller.start()
        return self

    def stop(self):
        self.controller.stop()


class WebhookReceiver:
    """An HTTP server that answers every POST with 200 and keeps its path and JSON body."""

    def __init__(self, port):
        self.posts = []
        lock = self._lock = threading.Lock()
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    posts.append({"at": time.monotonic(), "path": self.path, "content_type": self.headers["Content-Type"],
                                  "body": json.loads(body)})
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{port}/hooks/messages-alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def notifications(self):
        with self._lock:
            return [Notification("webhook", a["title"], a["text"], post["at"])
                    for post in self.posts for a in post["body"].get("attachments", [])]

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
