"""The tuner's own HTTP API: its state, decisions, events and metrics (open); settings and the
split (with the tuner's key, when it has one)."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import httpx

from contract import TUNER_AUTH_ROUTE, TUNER_SETTINGS_ROUTE, TUNER_SPLIT_ROUTE, TUNER_STATE_ROUTE
from contract.access import TUNER_KEY_ENV, key_matches
from tuner.control_loop import NothingToTune, Tuner
from tuner.engine_client import SplitRejected


def make_handler(tuner: Tuner, key: str | None = None):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the tuner logs its own events
            pass

        def _send(self, status: int, body, content_type: str = "application/json", headers=()) -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urlparse(self.path)
            since = float(parse_qs(url.query).get("since", ["0"])[0] or 0)
            routes = {"/health": lambda: {"ok": True, "status": tuner.status, "key_required": bool(key)},
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
            if key and not key_matches(self.headers.get("Authorization"), key):
                return self._send(401, {"error": f"{url.path} needs the tuner's key: send 'Authorization: Bearer KEY' "
                                                 f"(the key the tuner was started with, {TUNER_KEY_ENV})"},
                                  headers=[("WWW-Authenticate", "Bearer")])
            if url.path == TUNER_AUTH_ROUTE:
                return self._send(200, {"ok": True})
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
                return self._send(404, {"error": f"no route {url.path}; POST routes: {TUNER_SETTINGS_ROUTE}, "
                                                 f"{TUNER_SPLIT_ROUTE}, {TUNER_AUTH_ROUTE}"})
            except ValueError as exc:
                return self._send(400, {"error": str(exc)})
            except NothingToTune as exc:
                return self._send(409, {"error": str(exc)})
            except (SplitRejected, httpx.HTTPError) as exc:
                return self._send(502, {"error": str(exc)})

    return Handler


def serve(tuner: Tuner, host: str, port: int, key: str | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(tuner, key))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
