"""The tuner's own HTTP API: its state, decisions, events and metrics; settings and the split."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import httpx

from contract import TUNER_SETTINGS_ROUTE, TUNER_SPLIT_ROUTE, TUNER_STATE_ROUTE
from tuner.control_loop import NothingToTune, Tuner
from tuner.engine_client import SplitRejected


def make_handler(tuner: Tuner):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the tuner logs its own events
            pass

        def _send(self, status: int, body, content_type: str = "application/json") -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urlparse(self.path)
            since = float(parse_qs(url.query).get("since", ["0"])[0] or 0)
            routes = {"/health": lambda: {"ok": True, "status": tuner.status},
                      TUNER_STATE_ROUTE: tuner.state,
                      "/decisions": lambda: {"decisions": tuner.store.decisions(since)},
                      "/events": lambda: {"events": tuner.store.events(since)}}
            if url.path == "/metrics":
                return self._send(200, tuner.metrics_text(), "text/plain; version=0.0.4")
            if url.path not in routes:
                return self._send(404, {"error": f"no route {url.path}; routes: {', '.join([*routes, '/metrics'])}"})
            self._send(200, routes[url.path]())

        def do_POST(self):
            url = urlparse(self.path)
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                if url.path == TUNER_SETTINGS_ROUTE:
                    return self._send(200, {"settings": asdict(tuner.update_settings(body))})
                if url.path == TUNER_SPLIT_ROUTE:
                    if set(body) - {"prefill", "decode", "who"} or not {"prefill", "decode"} <= set(body):
                        raise ValueError('give {"prefill": P, "decode": D}')
                    return self._send(200, tuner.force_split(body["prefill"], body["decode"], body.get("who", "operator")))
                return self._send(404, {"error": f"no route {url.path}; POST routes: {TUNER_SETTINGS_ROUTE}, {TUNER_SPLIT_ROUTE}"})
            except ValueError as exc:
                return self._send(400, {"error": str(exc)})
            except NothingToTune as exc:
                return self._send(409, {"error": str(exc)})
            except (SplitRejected, httpx.HTTPError) as exc:
                return self._send(502, {"error": str(exc)})

    return Handler


def serve(tuner: Tuner, host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(tuner))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
