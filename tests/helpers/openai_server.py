"""A loopback OpenAI-compatible chat-completions server for tests (127.0.0.1 only, no network).

``FakeOpenAIServer(answer_fn)`` serves ``POST /v1/chat/completions``: ``answer_fn(request_json, i)`` returns the
text of choice ``i``. ``fail_first`` makes the first requests fail with the given HTTP status codes (retry tests);
``ignore_n`` returns one choice whatever ``n`` is (like llama.cpp / Ollama). Every request is recorded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAIServer:
    def __init__(self, answer_fn: Callable[[dict[str, Any], int], str], *, fail_first: tuple[int, ...] = (),
                 ignore_n: bool = False, model: str = "fake-coder") -> None:
        self.answer_fn = answer_fn
        self.fail = list(fail_first)
        self.ignore_n = ignore_n
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body,
                                           "auth": self.headers.get("Authorization")})
                    status = outer.fail.pop(0) if outer.fail else 200
                if status != 200:
                    data = json.dumps({"error": {"message": "injected failure", "type": "server_error"}}).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                n = 1 if outer.ignore_n else int(body.get("n", 1) or 1)
                choices = [{"index": i, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": outer.answer_fn(body, i)}} for i in range(n)]
                prompt_tokens = sum(len(m.get("content", "").split()) for m in body.get("messages", []))
                completion_tokens = sum(len(c["message"]["content"].split()) for c in choices)
                data = json.dumps({"id": f"chatcmpl-{len(outer.requests)}", "object": "chat.completion",
                                   "created": 0, "model": outer.model, "choices": choices,
                                   "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                             "total_tokens": prompt_tokens + completion_tokens}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
