"""A local stand-in for an OpenAI-compatible ``POST /v1/chat/completions`` server, for the tests of the clients that
talk to one (the openai planner, the caption splitter's and the instruction writer's LLM backends).

``answer(body) -> (status, payload, headers)`` decides each reply: ``payload`` a dict (sent as JSON) or a string (sent
as a chat completion's message content). Every request body is kept in ``bodies``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[dict[str, Any]], tuple[int, "dict[str, Any] | str", dict[str, str]]]


def completion(content: str) -> dict[str, Any]:
    """A chat completion whose message holds ``content``."""
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


class ChatStandIn:
    """Serves ``answer`` on loopback until :meth:`close`; ``url`` ends in ``/v1``."""

    def __init__(self, answer: Answer) -> None:
        self.bodies: list[dict[str, Any]] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                standin.bodies.append(body)
                status, payload, headers = answer(body)
                data = json.dumps(completion(payload) if isinstance(payload, str) else payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
