"""A loopback OpenAI-compatible server for tests: scripted chat replies, injected faults, a request log.

    with OpenAIStub(lambda request: "Q: ...\\nA: ...") as stub:
        client = openai.OpenAI(base_url=stub.base_url, api_key="test")
        ...
        stub.requests  # every JSON body received, in order
        stub.log       # (sha256 of the body, HTTP status sent, fault name or None) per request

The responder gets the request body (a dict) and returns either a string (the assistant message),
or ``Reply(...)`` to send an HTTP error, headers, a raw body, a finish_reason, or to drop the
connection. ``Faults(responder, rate=0.3)`` wraps a responder and injects transient faults
(429 with Retry-After, 500, 503, a body that is not JSON, an empty reply, a reply cut off with
``finish_reason="length"``, a dropped connection), decided by a hash of (body, how many times this
body was seen), so the same run faults the same way whatever the thread scheduling. The server
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    content: str = ""  # the assistant message for 200, the error message otherwise
    raw: str | None = None  # send this body as it is (for malformed responses)
    headers: dict = field(default_factory=dict)
    finish_reason: str = "stop"
    drop: bool = False  # close the connection without answering
    fault: str | None = None  # the injected fault this reply stands for (for the log)


def body_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


FAULTS = {
    "429": lambda: Reply(429, "slow down", headers={"Retry-After": "0"}),
    "500": lambda: Reply(500, "internal error"),
    "503": lambda: Reply(503, "overloaded"),
    "not_json": lambda: Reply(200, raw="<html><body>502 Bad Gateway</body></html>"),
    "empty": lambda: Reply(200, ""),
    "length": lambda: Reply(200, '{"pairs": [{"question": "What is', finish_reason="length"),
    "drop": lambda: Reply(drop=True),
}


class Faults:
    """A responder that fails a share ``rate`` of requests with faults from ``mix``, else asks ``responder``."""

    def __init__(self, responder: Callable[[dict], str | Reply], rate: float = 0.3, mix: tuple[str, ...] = tuple(FAULTS), seed: int = 0):
        self.responder = responder
        self.rate = rate
        self.mix = mix
        self.seed = seed
        self.seen: Counter = Counter()
        self._lock = threading.Lock()

    def __call__(self, body: dict) -> str | Reply:
        key = body_hash(body)
        with self._lock:
            self.seen[key] += 1
            visit = self.seen[key]
        draw = int(hashlib.sha256(f"{self.seed}:{key}:{visit}".encode()).hexdigest(), 16)
        if (draw % 10_000) / 10_000 < self.rate:
            name = self.mix[(draw // 10_000) % len(self.mix)]
            reply = FAULTS[name]()
            reply.fault = name
            return reply
        return self.responder(body)


class OpenAIStub:
    def __init__(self, responder: Callable[[dict], str | Reply], model: str = "stub-model"):
        self.responder = responder
        self.model = model
        self.requests: list[dict] = []
        self.log: list[tuple[str, int, str | None]] = []
        self.headers: list[dict] = []  # the HTTP headers of each request (to check what a client sent)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def succeeded(self) -> Counter:
        """How many complete (200, not injected) answers each body got: more than 1 means it was asked again."""
        return Counter(h for h, status, fault in self.log if status == 200 and fault is None)

    def __enter__(self) -> OpenAIStub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: str, headers: dict | None = None) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [{"id": stub.model, "object": "model"}]}))
                else:
                    self._send(404, json.dumps({"error": {"message": "not found"}}))

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with stub._lock:
                    stub.requests.append(body)
                    stub.headers.append(dict(self.headers))
                reply = stub.responder(body)
                if isinstance(reply, str):
                    reply = Reply(200, reply)
                with stub._lock:
                    stub.log.append((body_hash(body), 0 if reply.drop else reply.status, reply.fault))
                if reply.drop:
                    self.close_connection = True
                    self.connection.close()
                elif reply.raw is not None:
                    self._send(reply.status, reply.raw, reply.headers)
                elif reply.status != 200:
                    self._send(reply.status, json.dumps({"error": {"message": reply.content, "type": "stub_error"}}), reply.headers)
                else:
                    self._send(200, json.dumps(_completion(body, reply.content, stub.model, reply.finish_reason)), reply.headers)

        return Handler


def _completion(request: dict, content: str, model: str, finish_reason: str = "stop") -> dict:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", model),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
