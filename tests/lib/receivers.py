"""Where the test Alertmanagers' notifications arrive (tests/monitoring's process, and
tests/containers' container): a real SMTP server (aiosmtpd) and a real HTTP listener taking
Slack's incoming-webhook JSON, each keeping what it received in order."""

import email
import email.policy
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult


@dataclass
class Notification:
    """One notification as a person reads it: its title and its text, and when it arrived
    (time.monotonic())."""

    via: str
    title: str
    text: str
    at: float


class _Relay(SMTP):
    # The LOGIN prompts Postfix (Cyrus SASL) and Exchange send, and the only ones
    # Alertmanager's LOGIN answers: aiosmtpd's own ("User Name\0") it refuses as "unexpected
    # server challenge".
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"


class _RelayController(Controller):
    def factory(self):
        return _Relay(self.handler, **self.SMTP_kwargs)


class SmtpReceiver:
    """aiosmtpd's SMTP server in a thread; keeps each mail's recipients, subject and text,
    and how it came: over TLS or not, and as which login.

    With `tls_context` it offers STARTTLS and refuses mail before it (a relay that requires
    TLS); with `logins` ({username: password}) it requires AUTH (LOGIN or PLAIN, only over
    TLS, as aiosmtpd allows by default; `mechanisms` narrows the offer) and keeps every
    attempt in `auth_attempts`."""

    def __init__(self, port, host="127.0.0.1", tls_context=None, logins=None, mechanisms=("LOGIN", "PLAIN")):
        self.mails = []
        self.auth_attempts = []
        self._lock = threading.Lock()
        self._logins = logins
        options = {}
        if tls_context:
            options.update(tls_context=tls_context, require_starttls=True)
        if logins is not None:
            options.update(authenticator=self._authenticate, auth_required=True,
                           auth_exclude_mechanism={"LOGIN", "PLAIN"} - set(mechanisms))
        self.controller = _RelayController(self, hostname=host, port=port, **options)
        self.smarthost = f"{host}:{port}"

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        login, password = auth_data.login.decode(), auth_data.password.decode()
        success = self._logins.get(login) == password
        with self._lock:
            self.auth_attempts.append({"mechanism": mechanism, "login": login, "success": success})
        # handled=False: aiosmtpd answers a failure with 535 itself (its default, True, would
        # leave the client waiting for an answer).
        return AuthResult(success=success, handled=False, auth_data={"mechanism": mechanism, "login": login})

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        # session.ssl: the TLS connection's details once STARTTLS succeeded, None before.
        tls = session.ssl["ssl_object"].version() if session.ssl else None
        with self._lock:
            self.mails.append({"at": time.monotonic(), "from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                               "subject": str(message["Subject"]), "text": body.get_content() if body else "",
                               "tls": tls, "auth": session.auth_data if session.authenticated else None})
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
