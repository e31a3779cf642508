"""A reverse proxy in front of a real engine that can inject faults: garbage metrics, rejected
splits. Test-only: the engine behind it is real."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.garbage_metrics = False
        self.reject_splits = False
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: bytes, content_type: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, method: str):
                if method == "GET" and self.path.startswith("/metrics") and proxy.garbage_metrics:
                    return self._reply(200, b"<html>this is not prometheus</html>\nsglang:ttft{ 12", "text/plain")
                if method == "POST" and self.path.startswith("/semipd/split") and proxy.reject_splits:
                    return self._reply(403, b'{"error": "splits are frozen by the operator"}')
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
                try:
                    response = httpx.request(method, proxy.upstream + self.path, content=body, timeout=10,
                                             headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
                except httpx.HTTPError:
                    return self._reply(502, b'{"error": "upstream down"}')
                self._reply(response.status_code, response.content, response.headers.get("content-type", "text/plain"))

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
