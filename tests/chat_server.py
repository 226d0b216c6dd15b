"""A small OpenAI-compatible HTTP server on 127.0.0.1 for the LLM and VLM-judge tests and benches:
``POST /v1/chat/completions`` answers from a script of behaviours (an answer, a 429, a stall past the
client's timeout, a 4xx), or else from ``default``, a function of the request.

``GET /v1/models`` lists ``models`` (their ids and whatever else a server says of them: vLLM's ``root``,
``max_model_len``) where given, else answers 404. ``latency`` delays every answer (the judge bench's
200 ms); ``check`` (a function of the request
body that raises ``AssertionError`` on a malformed request) turns a bad request into a 400 and a
line in ``problems``. ``in_flight``/``most_in_flight`` count requests being answered at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many clients connect at once in the concurrency tests


class ChatServer:
    """Answers from ``script``: ``("answer", text)``, ``("429", retry_after)``, ``("stall", seconds)`` or
    ``("status", code)``; when the script is empty, ``default`` (a function of the request) answers."""

    def __init__(
        self,
        default: Callable[[dict], str] | None = None,
        latency: float = 0.0,
        check: Callable[[dict], None] | None = None,
        models: list[dict] | None = None,
    ) -> None:
        self.models = models  # GET /v1/models lists these (as vLLM does); None: not found, as some servers
        self.script: deque = deque()
        self.requests: list[dict] = []
        self.problems: list[str] = []
        self.default = default or (lambda request: "replace the cat with a dog")
        self.latency = latency
        self.check = check
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args) -> None:  # keep test output quiet
                return

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.rstrip("/").endswith("/models") and server.models is not None:
                    self._send(
                        200, {"object": "list", "data": [{"object": "model", **m} for m in server.models]}
                    )
                else:
                    self._send(404, {"error": {"message": "not found", "type": "invalid_request"}})

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with server._lock:
                    server.requests.append(
                        {"path": self.path, "body": body, "authorization": self.headers.get("authorization")}
                    )
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                try:
                    self._answer(body)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, body: dict) -> None:
                if server.check is not None:
                    try:
                        server.check(body)
                    except AssertionError as problem:
                        server.problems.append(str(problem))
                        self._send(400, {"error": {"message": str(problem), "type": "invalid_request"}})
                        return
                if server.latency:
                    time.sleep(server.latency)
                try:
                    kind, value = server.script.popleft()
                except IndexError:
                    kind, value = "answer", server.default(body)
                if kind == "stall":
                    time.sleep(value)
                    kind, value = "answer", "too late"
                if kind == "429":
                    self._send(
                        429,
                        {"error": {"message": "rate limited", "type": "rate_limit"}},
                        {"retry-after": str(value)},
                    )
                elif kind == "status":
                    self._send(value, {"error": {"message": f"status {value}", "type": "invalid_request"}})
                else:
                    self._send(
                        200,
                        {
                            "id": "chatcmpl-test",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body.get("model"),
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": value},
                                }
                            ],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                        },
                    )

            def _send(self, code: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client gave up (the timeout case)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
