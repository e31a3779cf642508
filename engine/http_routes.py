"""What semipd adds to SGLang's HTTP app: installed on its FastAPI app before the server starts."""

from __future__ import annotations

import json

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations here

OPENAI_GENERATION_ROUTES = ("/v1/completions", "/v1/chat/completions")
TOKEN_ID_FIELDS = {"/generate": "input_ids", "/v1/completions": "prompt"}  # where a request may give token ids


class RequestCheck:
    """ASGI middleware checking what SGLang would otherwise let through:
    - a body larger than `max_body_bytes` gets a 413 naming the limit (SGLang reads any size into
      memory);
    - an OpenAI request naming a model this server does not serve gets a 404 (as OpenAI and vLLM
      answer) instead of being served by whatever model is loaded;
    - a token id outside the vocabulary gets a 400 naming the valid range: SGLang passes it to the
      embedding, whose IndexError takes the whole engine down (one request, a denial of service)."""

    def __init__(self, app, served_names: set[str], vocab_size: int | None, max_body_bytes: int):
        self.app = app
        self.served_names = served_names
        self.vocab_size = vocab_size
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        path = scope["path"] if scope["type"] == "http" and scope["method"] == "POST" else None
        if path is None:
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._too_large(send)
        if path not in OPENAI_GENERATION_ROUTES and path not in TOKEN_ID_FIELDS:
            return await self.app(scope, receive, send)
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:  # sent in chunks, with no length given
                return await self._too_large(send)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        try:
            request = json.loads(body)
        except ValueError:
            request = None  # malformed bodies are SGLang's to reject, with its own 400
        request = request if isinstance(request, dict) else {}
        model = request.get("model")
        if path in OPENAI_GENERATION_ROUTES and isinstance(model, str) and model and model not in self.served_names:
            return await _send_json(send, 404, _error("NotFoundError", 404, "model",
                                                      f"The model '{model}' does not exist. This server serves: "
                                                      + ", ".join(sorted(self.served_names))))
        bad = out_of_vocabulary(request.get(TOKEN_ID_FIELDS.get(path, "")), self.vocab_size)
        if bad is not None:
            return await _send_json(send, 400, _error("BadRequestError", 400, TOKEN_ID_FIELDS[path],
                                                      f"token id {bad!r} is outside the vocabulary: valid ids "
                                                      f"are 0 to {self.vocab_size - 1}"))

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        await _send_json(send, 413, _error("RequestTooLarge", 413, "body",
                                           f"the request body is larger than this server's limit of "
                                           f"{self.max_body_bytes} bytes (semipd serve --max-body-mb)"))


def out_of_vocabulary(ids, vocab_size: int | None):
    """The first token id in `ids` (a list of ids, or a batch of such lists) outside 0..vocab_size-1;
    None when all are in range or `ids` holds no token ids (text is SGLang's to tokenize)."""
    if vocab_size is None or not isinstance(ids, list):
        return None
    for item in ids:
        for token in (item if isinstance(item, list) else [item]):
            if isinstance(token, int) and not isinstance(token, bool) and not 0 <= token < vocab_size:
                return token
    return None


def _error(kind: str, status: int, param: str, message: str) -> dict:
    return {"object": "error", "type": kind, "param": param, "code": status, "message": message}


async def _send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def install(app, served_names: set[str], vocab_size: int | None, max_body_bytes: int) -> None:
    app.add_middleware(RequestCheck, served_names=served_names, vocab_size=vocab_size,
                       max_body_bytes=max_body_bytes)


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
