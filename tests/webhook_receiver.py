#!/usr/bin/env python3
"""A webhook receiver for tests/webhooks.rs: verifies each request with the Standard Webhooks
reference library (`pip install standardwebhooks`) and appends one JSON line per request to
OUT_FILE (fsynced before the answer):

    {"path": ..., "id": webhook-id, "peer": client port, "valid": true, "event": <body>} -> 204
    {"path": ..., "id": webhook-id, "peer": client port, "valid": false, "error": ...}  -> 401

HTTP/1.1 with keep-alive, one thread per connection: `peer` (the client's port) tells which
requests came over the same connection.

Usage: webhook_receiver.py PORT SECRET_FILE OUT_FILE [CERT_PEM KEY_PEM]
With CERT_PEM and KEY_PEM it serves HTTPS. With RECEIVER_REFUSE=TEXT in the environment, a
verified event whose recipient contains TEXT is answered 500 (recorded with "refused": true).
With RECEIVER_UNDELIMITED=1, a verified event is answered 200 with a body but neither
Content-Length nor chunked encoding, on a connection left open: the body never ends.
Bounds: bodies over 1 MiB are refused (413); the test kills the process when done.
"""

import json
import os
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

MAX_BODY = 1024 * 1024

PORT = int(sys.argv[1])
with open(sys.argv[2], encoding="ascii") as f:
    HOOK = Webhook(f.read().strip())
OUT = sys.argv[3]
REFUSE = os.environ.get("RECEIVER_REFUSE")
UNDELIMITED = os.environ.get("RECEIVER_UNDELIMITED") == "1"


LOCK = threading.Lock()


def record(entry):
    with LOCK, open(OUT, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")
        out.flush()
        os.fsync(out.fileno())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self.send_response(413)
            self.send_header("content-length", "0")
            self.send_header("connection", "close")
            self.end_headers()
            return
        body = self.rfile.read(length)
        headers = {k: v for k, v in self.headers.items()}
        entry = {
            "path": self.path,
            "id": self.headers.get("webhook-id"),
            "peer": self.client_address[1],
        }
        try:
            entry["event"] = HOOK.verify(body, headers)
            entry["valid"] = True
            code = 204
            if REFUSE and REFUSE in str(entry["event"].get("data", {}).get("recipient", "")):
                entry["refused"] = True
                code = 500
        except (WebhookVerificationError, ValueError) as e:
            entry["valid"] = False
            entry["error"] = str(e)
            code = 401
        record(entry)
        if UNDELIMITED and code == 204:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")
            self.wfile.flush()
            return
        self.send_response(code)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format, *args):
        sys.stderr.write("receiver: " + (format % args) + "\n")


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True
if len(sys.argv) > 5:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[4], sys.argv[5])
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
