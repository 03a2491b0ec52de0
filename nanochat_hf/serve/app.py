"""The FastAPI app: chat page, TGI routes, OpenAI chat completions, all on one continuous-batching scheduler.

    app = create_app(engine, Limits(max_concurrent=32), model_id="nanochat-d20")
    uvicorn.run(app, host="127.0.0.1", port=8000)

Every request becomes a `Request` on the engine's `Scheduler` (one background thread decodes all active
requests together); its events reach the event loop through an asyncio.Queue, and a request that ends
early (client gone, stop sequence, timeout) is cancelled, its row leaving the batch at the next step.
A route that generates builds its protocol's answer (`TGIAnswer`, `ChatAnswer`) and hands it to
`respond`: JSON once generation ends, or `sse` for a stream. Slow or stuck clients cannot slow the
others: the scheduler never waits on a socket, a late body gets 408, and a stream whose client stops
reading leaves the batch, then is disconnected (`ClientStream`).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import random
import socket
import threading
import time
import uuid
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect

from nanochat_hf import __version__
from nanochat_hf.chat_format import render_for_completion
from nanochat_hf.engine import Engine
from nanochat_hf.rendering import ChatRenderer, StreamDecoder
from nanochat_hf.sampling import SamplingParams
from nanochat_hf.scheduler import Event
from nanochat_hf.serve.protocol import ApiError, Limits, parse_chat, parse_json_body, parse_tgi, validation_error

STREAM_SEND_BUFFER = 64 * 1024  # kernel send buffer of a streaming connection (bytes)
TRANSPORT = "nanochat_hf.transport"  # scope key: the connection's asyncio transport, when the server is uvicorn


def _error_response(request: Request, err: ApiError) -> JSONResponse:
    if request.url.path.startswith("/v1/"):  # OpenAI's shape, which the openai client parses
        kind = {400: "invalid_request_error", 401: "authentication_error", 413: "invalid_request_error",
                408: "timeout", 421: "invalid_request_error", 422: "invalid_request_error",
                503: "server_overloaded", 504: "timeout"}.get(err.status, "server_error")
        status = 400 if err.status == 422 else err.status  # OpenAI answers invalid requests with 400
        body = {"error": {"message": err.message, "type": kind, "param": None, "code": status}}
    else:  # TGI's shape, which text_generation / InferenceClient parse
        status, body = err.status, {"error": err.message, "error_type": err.kind}
    # 408: the rest of the body may still be trickling in; closing is the only way to stop reading it
    headers = {"connection": "close"} if status == 408 else None
    return JSONResponse(body, status_code=status, headers=headers)


# ----------------------------------------------------------------------------- access control

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """True for a bind address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    ip = _ip(host)
    return host.lower() == "localhost" if ip is None else ip.is_loopback


def host_name(header: str) -> str:
    """'Example.com:8000' -> 'example.com', '[::1]:80' -> '::1'; a malformed one -> something no list holds."""
    header = header.strip().lower()
    if header.startswith("["):  # an IPv6 literal: its colons are not the port's
        name, _, rest = header[1:].partition("]")
        return name if rest == "" or (rest[:1] == ":" and rest[1:].isdigit()) else ""
    name, colon, port = header.rpartition(":")
    return name if colon and port.isdigit() else header


@dataclass(frozen=True)
class Access:
    """Who may talk to the server: the API key (None: anyone), the Host names it answers to, and the one
    browser origin that gets CORS headers (None: no CORS at all)."""

    api_key: str | None = None
    hosts: frozenset[str] = LOOPBACK_NAMES
    any_ip_host: bool = False  # bound to every interface: any IP literal names this machine
    allow_origin: str | None = None

    @classmethod
    def for_bind(cls, host: str, api_key: str | None = None, allowed_hosts: tuple[str, ...] = (),
                 allow_origin: str | None = None) -> Access:
        """The Host names a server bound to `host` answers to, plus `allowed_hosts` (proxies, DNS names)."""
        names = {host.strip("[]").lower()} | {h.strip().strip("[]").lower() for h in allowed_hosts if h.strip()}
        ip = _ip(host)
        wildcard = ip is not None and ip.is_unspecified  # 0.0.0.0 / ::, every interface, loopback included
        if wildcard:
            names.add(socket.gethostname().lower())
        if wildcard or is_loopback(host):
            names |= LOOPBACK_NAMES
        return cls(api_key or None, frozenset(names), wildcard, allow_origin)

    def host_allowed(self, header: str | None) -> bool:
        # DNS rebinding points a name the attacker owns at this machine, so a page on that name can
        # read our answers; its requests carry that name in Host. An IP literal cannot be rebound.
        name = host_name(header or "")
        return name in self.hosts or (self.any_ip_host and _ip(name) is not None)

    def key_matches(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        # constant time: a byte-by-byte compare that stops early tells a timing attacker how much matched
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())


class HostCheck:
    """ASGI middleware: a Host header that is not one of the server's names gets 421."""

    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send):
        host = Headers(scope=scope).get("host") if scope["type"] == "http" else None
        if scope["type"] == "http" and not self.access.host_allowed(host):
            err = ApiError(421, f"this server does not answer to the host {host or ''!r}; start it with "
                                "--allowed-hosts to add a name", "misdirected")
            return await _error_response(Request(scope), err)(scope, receive, send)
        await self.app(scope, receive, send)


class KeyCheck:
    """ASGI middleware: without `Authorization: Bearer <key>`, 401 on every route but the page and /health."""

    OPEN = {("GET", "/"), ("HEAD", "/"), ("GET", "/health"), ("HEAD", "/health")}  # the HTML holds no data

    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (scope["method"], scope["path"]) not in self.OPEN \
                and not self.access.key_matches(Headers(scope=scope).get("authorization")):
            err = ApiError(401, "missing or wrong API key: send the header `Authorization: Bearer <key>`",
                           "unauthorized")
            response = _error_response(Request(scope), err)
            response.headers["WWW-Authenticate"] = "Bearer"
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------- slow and stuck clients


class App(FastAPI):
    """FastAPI that puts each connection's transport in the scope (None under servers other than uvicorn):
    ASGI cannot shrink a send buffer or drop a connection, which `ClientStream` needs."""

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope[TRANSPORT] = getattr(getattr(send, "__self__", None), "transport", None)
        await super().__call__(scope, receive, send)


class ClientStalled(Exception):
    """A stream's client read nothing for the idle timeout."""


class ClientStream(StreamingResponse):
    """Server-sent events that a client which stops reading cannot hold on to.

    The kernel send buffer is capped (Linux grows it to megabytes, hiding a stuck client for thousands of
    tokens), so such a client soon blocks our writes and its request is parked once `max_unread_tokens`
    wait. A write still blocked after `idle_timeout_s` closes the generator (cancelling the request) and
    drops the connection.
    """

    def __init__(self, content, request: Request, idle_timeout_s: float):
        super().__init__(content, media_type="text/event-stream")
        self.transport, self.idle_timeout_s = request.scope.get(TRANSPORT), idle_timeout_s

    async def stream_response(self, send):
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER)

        async def send_or_stall(message):
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    await send(message)
            except TimeoutError:
                raise ClientStalled from None

        try:
            await super().stream_response(send_or_stall)
        except ClientStalled:
            await self.body_iterator.aclose()
            if self.transport is not None:
                self.transport.abort()
                await asyncio.sleep(0)  # let uvicorn see the connection go before the app returns


class Mailbox:
    """Events from the scheduler thread to the event loop: the first event of a decode step schedules one
    drain and the rest ride along, instead of a loop wake-up (pipe write + GIL hand-off) per row."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.lock, self.pending = loop, threading.Lock(), []  # pending: (queue, event)

    def post(self, q: asyncio.Queue, event: Event):  # scheduler thread
        with self.lock:
            self.pending.append((q, event))
            if len(self.pending) > 1:
                return  # a drain is already scheduled
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed (shutting down): drop, and let the scheduler cancel
            with self.lock:
                self.pending.clear()
            raise

    def _drain(self):  # event loop
        with self.lock:
            items, self.pending = self.pending, []
        for q, event in items:
            q.put_nowait(event)


class Server:
    """State shared by the handlers: engine, scheduler, limits, the in-flight count and the chat page."""

    def __init__(self, engine: Engine, limits: Limits, model_id: str):
        self.engine, self.limits, self.model_id, self.tokenizer = engine, limits, model_id, engine.tokenizer
        self.scheduler, self.mailbox, self.in_flight, self.created = None, None, 0, int(time.time())
        self.special_ids = ChatRenderer(self.tokenizer).special
        self.page = resources.files("nanochat_hf.serve").joinpath("static/chat.html").read_text(encoding="utf-8")

    def start(self):
        self.mailbox = Mailbox(asyncio.get_running_loop())
        self.scheduler = self.engine.scheduler(self.limits.max_concurrent)

    def stop(self):
        if self.scheduler is not None:
            self.scheduler.close()

    async def read_body(self, request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            raise ApiError(413, f"the request body is {declared} bytes; the limit is {self.limits.max_body_bytes}")
        chunks, size, limit = [], 0, self.limits.max_body_bytes
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):  # a trickling client would hold its connection
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, f"the request body is over the limit of {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {self.limits.body_timeout_s:g} s "
                                f"({size} bytes came); send it in one go", "timeout") from None
        except ClientDisconnect:  # gave up mid-body: nobody reads the answer, but no traceback in the log
            raise ApiError(400, "the client closed the connection before its whole body came") from None
        return parse_json_body(b"".join(chunks))

    def check_prompt(self, ids: list[int]) -> list[int]:
        n, limit = len(ids), min(self.limits.max_prompt_tokens, self.engine.max_context - 1)
        if n > limit:
            raise validation_error(f"the prompt has {n} tokens; the limit is {limit} (shorten it, or set `truncate`)")
        return ids

    def seeded(self, params: SamplingParams) -> SamplingParams:
        if params.temperature > 0 and params.seed is None:  # report the seed we drew, as TGI does
            params.seed = random.randrange(2**63)
        return params

    async def event_batches(self, http: Request, prompt: list[int], params: SamplingParams,
                            prompt_logprobs: bool = False):
        """Submit to the scheduler and yield lists of its Events (all that arrived since the last look)
        until the end; cancels the request if we stop early. A stream writes each list as one chunk."""
        capacity = self.limits.max_concurrent + self.limits.max_queue
        if self.in_flight >= capacity:
            raise ApiError(503, f"the server is busy ({self.in_flight} requests in flight, limit {capacity}); retry "
                                "later", "overloaded")
        self.in_flight += 1
        q, deadline = asyncio.Queue(), time.monotonic() + self.limits.request_timeout_s
        req, finished = None, False
        try:
            req = self.scheduler.submit(prompt, params, lambda ev: self.mailbox.post(q, ev),
                                        want_prompt_logprobs=prompt_logprobs,
                                        max_unread=self.limits.max_unread_tokens)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ApiError(504, f"the request took longer than {self.limits.request_timeout_s:g} s", "timeout")
                try:
                    batch = [await asyncio.wait_for(q.get(), timeout=min(left, 1.0))]
                except asyncio.TimeoutError:
                    if await http.is_disconnected():  # a non-streaming client that went away
                        return
                    continue
                while not q.empty():
                    batch.append(q.get_nowait())
                req.mark_read(len(batch))
                for i, ev in enumerate(batch):
                    if ev.finish_reason == "error":
                        if i:
                            yield batch[:i]
                        raise ApiError(500, f"generation failed: {ev.error}", "generation")
                    if ev.finish_reason is not None:
                        finished = True
                        yield batch[: i + 1]
                        return
                yield batch
        finally:
            self.in_flight -= 1
            if req is not None and not finished:
                req.cancel()  # client gone, stop sequence or timeout: free the row

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])


def _stop_hit(text: str, stops: list[str]) -> str | None:
    return next((s for s in stops if s in text), None)


# ----------------------------------------------------------------------------- the two ways to answer
# An answer (TGIAnswer, ChatAnswer) turns a request's Events into its protocol's JSON; these two loops
# drive every route that generates, so the routes differ only in what they parse and how they shape.


async def respond(server: Server, http: Request, answer, stream: bool, prompt_logprobs: bool = False):
    """The whole answer as JSON once generation ends, or server-sent events as tokens come."""
    if stream:
        return ClientStream(sse(server, http, answer), http, server.limits.idle_timeout_s)
    batches = server.event_batches(http, answer.prompt, answer.params, prompt_logprobs)
    async with aclosing(batches):  # leaving early (a stop sequence) cancels the request at once
        async for batch in batches:
            for ev in batch:
                answer.take(ev)
                if answer.finish is not None:
                    return JSONResponse(answer.body())
    raise ApiError(499, "cancelled", "cancelled")  # a client that left: nobody reads this


async def sse(server: Server, http: Request, answer):
    """The one streaming loop: each token's events, every token that is ready in one write."""
    for chunk in answer.head():
        yield chunk
    batches = server.event_batches(http, answer.prompt, answer.params)
    try:
        async with aclosing(batches):
            async for batch in batches:
                out = []
                for ev in batch:
                    if ev.token is None:
                        continue
                    out += answer.stream_event(ev)
                    if answer.finish is not None:
                        yield "".join(out)
                        return
                if out:
                    yield "".join(out)
    except ApiError as err:  # headers are already sent: report in the stream, as TGI and OpenAI do
        yield answer.stream_error(err)


class TGIAnswer:
    """TGI's answer to one request: `generated_text` (+ details), whole or as a stream of token events.

    The pieces streamed (each valid UTF-8) also make `generated_text`, so both forms read the same. Special
    tokens keep their spelling (a tool call stays visible); the stop token is not part of the text.
    """

    FINISH = {"stop": "eos_token", "length": "length"}  # ours -> TGI's names

    def __init__(self, server: Server, r, prompt: list[int], params: SamplingParams, as_list: bool):
        self.server, self.r, self.prompt, self.params, self.as_list = server, r, prompt, params, as_list
        self.decoder, self.generated, self.tokens = StreamDecoder(server.tokenizer), "", []  # (id, logprob)
        self.prefill, self.finish, self.stop_text = [], None, None

    def take(self, ev: Event) -> tuple[str, bool]:
        """One event in -> the token's text piece and whether it is a special token."""
        if ev.prompt_logprobs is not None:
            self.prefill = [{"id": t, "text": self.server.token_text(t), "logprob": lp}
                            for t, lp in zip(self.prompt, ev.prompt_logprobs)]
        piece, special = "", False
        if ev.token is not None:
            self.tokens.append((ev.token, ev.logprob))
            piece, special = self.push(ev.token, final=ev.finish_reason is not None)
            if self.r.stop and (hit := _stop_hit(self.generated, self.r.stop)):
                self.stop_text, self.finish = hit, "stop_sequence"
                return piece, special
        if ev.finish_reason:
            self.finish = self.FINISH.get(ev.finish_reason, ev.finish_reason)
        return piece, special

    def push(self, token: int, final: bool) -> tuple[str, bool]:
        s = self.server
        if token in s.special_ids:
            pending = self.decoder.flush()  # bytes of a split character end at a special token
            self.decoder = StreamDecoder(s.tokenizer)
            self.generated += pending + ("" if token in s.engine.stop_ids else s.token_text(token))
            return pending + s.token_text(token), True
        piece = self.decoder.push(token) + (self.decoder.flush() if final else "")
        self.generated += piece
        return piece, False

    @property
    def text(self) -> str:
        text = self.generated
        if self.stop_text is not None:  # TGI keeps the stop sequence
            text = text[: text.index(self.stop_text) + len(self.stop_text)]
        return (self.r.inputs + text) if self.r.return_full_text else text

    @property
    def seed(self) -> int | None:
        return self.params.seed if self.params.temperature > 0 else None

    def body(self) -> dict | list:
        out = {"generated_text": self.text}
        if self.r.details:
            s = self.server
            tokens = [{"id": t, "text": s.token_text(t), "logprob": lp, "special": t in s.special_ids}
                      for t, lp in self.tokens]
            out["details"] = {"finish_reason": self.finish, "generated_tokens": len(self.tokens), "seed": self.seed,
                              "prefill": self.prefill, "top_tokens": None, "best_of_sequences": None, "tokens": tokens}
        return [out] if self.as_list else out

    def head(self) -> list[str]:
        return []

    def stream_event(self, ev: Event) -> list[str]:
        piece, special = self.take(ev)
        event = {"index": len(self.tokens),
                 "token": {"id": ev.token, "text": piece, "logprob": ev.logprob, "special": special},
                 "top_tokens": None, "generated_text": None, "details": None}
        if self.finish is not None:
            event["generated_text"] = self.text
            event["details"] = {"finish_reason": self.finish, "generated_tokens": len(self.tokens),
                                "seed": self.seed, "input_length": len(self.prompt)}
        return [f"data:{json.dumps(event)}\n\n"]

    def stream_error(self, err: ApiError) -> str:
        return f"data:{json.dumps({'error': err.message, 'error_type': err.kind})}\n\n"


class ChatAnswer:
    """OpenAI's chat completion for one request, whole or as chunks; `parts` carries nanochat's tool calls."""

    FINGERPRINT = f"nanochat_hf-{__version__}"

    def __init__(self, server: Server, r, prompt: list[int], params: SamplingParams):
        self.server, self.r, self.prompt, self.params = server, r, prompt, params
        self.head_fields = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                            "created": int(time.time()), "model": r.model or server.model_id}
        chunk = {**self.head_fields, "object": "chat.completion.chunk"}  # same order of keys
        self.chunk_fields = {**chunk, "system_fingerprint": self.FINGERPRINT}
        self.usage_fields = {**chunk, "choices": []}
        self.parts, self.logprobs, self.finish = Parts(server.tokenizer), [], None

    def take(self, ev: Event) -> tuple[str, str, str]:
        """One event in -> (content piece, the part's type, raw text piece of the part)."""
        piece = ("", self.parts.renderer.kind, "")
        if ev.token is not None:
            piece = self.parts.push(ev.token)
            if self.r.logprobs and ev.token not in self.server.engine.stop_ids:
                text = self.server.token_text(ev.token)
                self.logprobs.append({"token": text, "logprob": ev.logprob, "bytes": list(text.encode("utf-8")),
                                      "top_logprobs": []})
            if self.r.stop and _stop_hit(self.parts.content, self.r.stop):
                self.finish = "stop"
                return piece
        if ev.finish_reason:
            self.finish = ev.finish_reason
        return piece

    def usage(self) -> dict:
        n = len(self.prompt)
        return {"prompt_tokens": n, "completion_tokens": self.parts.count, "total_tokens": n + self.parts.count}

    def body(self) -> dict:
        content, parts = self.parts.finish(self.r.stop)
        message = {"role": "assistant", "content": content, "parts": parts}
        return {**self.head_fields, "system_fingerprint": self.FINGERPRINT,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish,
                             "logprobs": {"content": self.logprobs} if self.r.logprobs else None}],
                "usage": self.usage()}

    def chunk(self, delta: dict, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return f"data: {json.dumps({**self.chunk_fields, 'choices': [choice]})}\n\n"

    def head(self) -> list[str]:
        return [self.chunk({"role": "assistant", "content": ""})]

    def stream_event(self, ev: Event) -> list[str]:
        content, kind, raw = self.take(ev)
        out = [self.chunk({"content": content, "nanochat": {"type": kind, "text": raw}})] \
            if content or raw or kind != "text" else []
        if self.finish is not None:
            out.append(self.chunk({}, self.finish))
            if self.r.include_usage:
                out.append(f"data: {json.dumps({**self.usage_fields, 'usage': self.usage()})}\n\n")
            out.append("data: [DONE]\n\n")
        return out

    def stream_error(self, err: ApiError) -> str:
        return f"data: {json.dumps({'error': {'message': err.message, 'type': err.kind, 'code': err.status}})}\n\n"


class Parts:
    """Completion tokens -> readable content (ChatRenderer's, a tool call as `[calculator: expr = result]`)
    and nanochat's message parts."""

    def __init__(self, tokenizer):
        self.renderer, self.parts, self.content, self.count = ChatRenderer(tokenizer), [], "", 0

    def push(self, token: int) -> tuple[str, str, str]:
        """-> (content piece, the part's type, raw text piece of the part)."""
        self.count += 1
        r = self.renderer
        piece = r.push(token)
        self.content += piece
        if token in r.special:
            if token in r.opens:
                self.parts.append({"type": r.kind, "text": ""})
            return piece, r.kind, ""
        if not self.parts or self.parts[-1]["type"] != r.kind:
            self.parts.append({"type": r.kind, "text": ""})
        self.parts[-1]["text"] += piece
        return piece, r.kind, piece

    def finish(self, stops: list[str]) -> tuple[str, list[dict]]:
        content = self.content
        hit = _stop_hit(content, stops) if stops else None
        if hit is not None:
            content = content[: content.index(hit)]  # OpenAI drops the stop sequence
        return content, [p for p in self.parts if p["text"] or p["type"] != "text"]


# ----------------------------------------------------------------------------- routes


def _server(request: Request) -> Server:
    return request.app.state.server


async def chat_page(request: Request):
    return HTMLResponse(_server(request).page)


async def health(request: Request):
    server = _server(request)
    parked = len(server.scheduler.parked) if server.scheduler is not None else 0  # clients not reading
    return {"status": "ok", "in_flight": server.in_flight, "parked": parked}


async def info(request: Request):
    server = _server(request)
    limits, engine = server.limits, server.engine
    p = next(engine.model.parameters())
    return {
        "model_id": server.model_id, "model_sha": None, "model_dtype": str(p.dtype).replace("torch.", ""),
        "model_device_type": p.device.type, "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": limits.max_concurrent + limits.max_queue, "max_best_of": 1,
        "max_stop_sequences": limits.max_stop_sequences, "max_input_tokens": limits.max_prompt_tokens,
        "max_input_length": limits.max_prompt_tokens,
        "max_total_tokens": min(limits.max_prompt_tokens + limits.max_new_tokens, engine.max_context),
        "max_batch_size": limits.max_concurrent, "validation_workers": 1, "max_client_batch_size": 1,
        "router": "nanochat_hf", "version": __version__, "sha": None, "docker_label": None,
    }


async def models(request: Request):
    server = _server(request)
    return {"object": "list", "data": [{"id": server.model_id, "object": "model", "created": server.created,
                                        "owned_by": "nanochat_hf"}]}


async def tokenize(request: Request):
    server = _server(request)
    inputs = (await server.read_body(request)).get("inputs")
    if not isinstance(inputs, str) or not inputs:
        raise validation_error("`inputs` must be a non-empty string")
    enc = server.tokenizer(inputs, return_offsets_mapping=True)
    return [{"id": i, "text": inputs[a:b] if b > a else server.token_text(i), "start": a, "stop": b}
            for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]


async def tgi(request: Request, stream: bool | None, as_list: bool):
    server = _server(request)
    r = parse_tgi(await server.read_body(request), server.limits, stream)
    prompt = server.tokenizer(r.inputs)["input_ids"]
    if r.truncate is not None:
        prompt = prompt[-r.truncate:]
    answer = TGIAnswer(server, r, server.check_prompt(prompt), server.seeded(r.params), as_list)
    return await respond(server, request, answer, r.stream, prompt_logprobs=r.decoder_input_details)


async def tgi_compat(request: Request):
    return await tgi(request, None, as_list=True)


async def generate(request: Request):
    return await tgi(request, False, as_list=False)


async def generate_stream(request: Request):
    return await tgi(request, True, as_list=False)


async def chat_completions(request: Request):
    server = _server(request)
    r = parse_chat(await server.read_body(request), server.limits)
    try:
        prompt = render_for_completion(server.tokenizer, r.messages)
    except ValueError as err:  # the chat template's own checks (alternating roles, ...)
        raise validation_error(str(err)) from None
    answer = ChatAnswer(server, r, server.check_prompt(prompt), server.seeded(r.params))
    return await respond(server, request, answer, r.stream)


ROUTES = (  # method, path, handler, extra arguments of FastAPI's add_api_route
    ("GET", "/", chat_page, {"response_class": HTMLResponse}),
    ("GET", "/health", health, {}),
    ("GET", "/info", info, {}),
    ("GET", "/v1/models", models, {}),
    ("POST", "/tokenize", tokenize, {}),
    ("POST", "/", tgi_compat, {}),
    ("POST", "/generate", generate, {}),
    ("POST", "/generate_stream", generate_stream, {}),
    ("POST", "/v1/chat/completions", chat_completions, {}),
)


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.server.start()
    yield
    app.state.server.stop()


async def api_error(request: Request, err: ApiError) -> JSONResponse:
    return _error_response(request, err)


def create_app(engine: Engine, limits: Limits | None = None, model_id: str = "nanochat",
               access: Access | None = None) -> FastAPI:
    """`access` defaults to a loopback server without a key (Host must be localhost, 127.0.0.1 or [::1])."""
    app = App(title="nanochat_hf", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.server = Server(engine, limits or Limits(), model_id)
    access = access or Access()
    # Host check outermost (added last), then CORS (a preflight carries no key), then the key check.
    if access.api_key:
        app.add_middleware(KeyCheck, access=access)
    if access.allow_origin:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[access.allow_origin], allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(HostCheck, access=access)
    app.add_exception_handler(ApiError, api_error)
    for method, path, handler, extra in ROUTES:
        app.add_api_route(path, handler, methods=[method], **extra)
    return app
