"""A small OpenAI-compatible HTTP server on 127.0.0.1 for the LLM tests: ``POST /v1/chat/completions``
answers from a script of behaviours (an answer, a 429, a stall past the client's timeout, a 4xx)."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    """Answers from ``script``: ``("answer", text)``, ``("429", retry_after)``, ``("stall", seconds)`` or
    ``("status", code)``; when the script is empty, ``default`` (a function of the request) answers."""

    def __init__(self, default=None) -> None:
        self.script: deque = deque()
        self.requests: list[dict] = []
        self.default = default or (lambda request: "replace the cat with a dog")
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                return

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                server.requests.append(
                    {"path": self.path, "body": body, "authorization": self.headers.get("authorization")}
                )
                kind, value = server.script.popleft() if server.script else ("answer", server.default(body))
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

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
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
