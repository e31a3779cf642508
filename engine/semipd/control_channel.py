"""The admin channel between the HTTP server and the semi-PD owner (the scheduler process).

The HTTP process sends one JSON request at a time and waits for the reply; the owner answers
between its steps (`ControlServer.serve_pending`), so a split change is applied at a step
boundary of the owner's loop, never in the middle of a forward pass.
"""

from __future__ import annotations

import json

import zmq
import zmq.asyncio


class ControlServer:
    def __init__(self, endpoint: str):
        self.sock = zmq.Context.instance().socket(zmq.REP)
        self.sock.bind(endpoint)

    def serve_pending(self, handle) -> int:
        """Answer every waiting request with handle(request) -> dict; returns how many."""
        served = 0
        while self.sock.poll(0):
            request = json.loads(self.sock.recv())
            try:
                reply = handle(request)
            except Exception as exc:  # a bad request must not take the owner down
                reply = {"ok": False, "status": 500, "error": f"{type(exc).__name__}: {exc}"}
            self.sock.send(json.dumps(reply).encode())
            served += 1
        return served


async def control_request(endpoint: str, request: dict, timeout_s: float = 10.0) -> dict:
    """Send one request to the owner and wait for its reply (from the HTTP server's event loop)."""
    sock = zmq.asyncio.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        await sock.send(json.dumps(request).encode())
        if not await sock.poll(int(timeout_s * 1000)):
            return {"ok": False, "status": 503,
                    "error": f"the engine did not answer within {timeout_s:.0f} s"}
        return json.loads(await sock.recv())
    finally:
        sock.close()
