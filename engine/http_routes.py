"""What semipd adds to SGLang's HTTP app: installed on its FastAPI app before the server starts."""

from __future__ import annotations

import json

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations here

OPENAI_GENERATION_ROUTES = ("/v1/completions", "/v1/chat/completions")


class ModelNameCheck:
    """ASGI middleware: an OpenAI request naming a model this server does not serve gets a 404
    (as OpenAI and vLLM answer) instead of being served by whatever model is loaded."""

    def __init__(self, app, served_names: set[str]):
        self.app = app
        self.served_names = served_names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in OPENAI_GENERATION_ROUTES:
            return await self.app(scope, receive, send)
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        model = _requested_model(body)
        if model is not None and model not in self.served_names:
            return await _send_json(send, 404, {
                "object": "error", "type": "NotFoundError", "param": "model", "code": 404,
                "message": f"The model '{model}' does not exist. This server serves: "
                           + ", ".join(sorted(self.served_names)),
            })

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)


def _requested_model(body: bytes) -> str | None:
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return None  # malformed bodies are SGLang's to reject, with its own 400
    return model if isinstance(model, str) and model else None


async def _send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def install(app, served_names: set[str]) -> None:
    app.add_middleware(ModelNameCheck, served_names=served_names)


def install_semipd_routes(app, control_endpoint: str) -> None:
    """The split's admin API: read it, set it, and the engine's step records (admin key when set)."""
    from fastapi.responses import JSONResponse

    from contract import SPLIT_ROUTE, STEPS_ROUTE, WORKERS_ROUTE
    from engine.semipd.control_channel import control_request
    from engine.sglang_seams import admin_optional

    async def ask(request: dict) -> JSONResponse:
        reply = await control_request(control_endpoint, request)
        status = 200 if reply.pop("ok", False) else reply.pop("status", 500)
        return JSONResponse(reply, status_code=status)

    @admin_optional
    async def get_split():
        return await ask({"op": "get_split"})

    @admin_optional
    async def set_split(raw: Request):
        try:
            body = json.loads(await raw.body())
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return JSONResponse({"error": 'the body must be a JSON object {"prefill": P, "decode": D}'},
                                status_code=400)
        who = raw.headers.get("x-semipd-who") or body.get("who") or (raw.client.host if raw.client else "admin")
        return await ask({"op": "set_split", "prefill": body.get("prefill"), "decode": body.get("decode"),
                          "who": who})

    @admin_optional
    async def get_steps(since: float = 0.0):
        return await ask({"op": "steps", "since": since})

    @admin_optional
    async def get_workers():
        return await ask({"op": "workers"})

    app.add_api_route(SPLIT_ROUTE, get_split, methods=["GET"])
    app.add_api_route(SPLIT_ROUTE, set_split, methods=["POST"])
    app.add_api_route(STEPS_ROUTE, get_steps, methods=["GET"])
    app.add_api_route(WORKERS_ROUTE, get_workers, methods=["GET"])
