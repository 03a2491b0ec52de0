"""`nanochat-hf serve` against real clients on loopback: text_generation, huggingface_hub, openai, raw HTTP."""

import contextlib
import json
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from nanochat_hf.engine import Engine
from nanochat_hf.serve import Limits, create_app
from nanochat_hf.serve.app import Access


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(engine, limits=None, access=None):
    """uvicorn in a thread on a free loopback port; yields the base URL."""
    with live_app(create_app(engine, limits or Limits(), model_id="tiny", access=access)) as base:
        yield base


@contextlib.contextmanager
def live_app(app):
    """`app` served by uvicorn in a thread on a free loopback port; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(300):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def engine(tiny_tokenizer):
    from test_engine import tiny_model

    return Engine(tiny_model(tiny_tokenizer, "modern"), tiny_tokenizer)


@pytest.fixture(scope="module")
def url(engine):
    with live_server(engine, Limits(max_prompt_tokens=200, max_new_tokens=48)) as base:
        yield base


def wait_idle(base):
    for _ in range(200):
        if httpx.get(f"{base}/health").json()["in_flight"] == 0:
            return True
        time.sleep(0.05)
    return False


# ----------------------------------------------------------------------------- plain routes


def test_health_info_models_tokenize_page(url, tiny_tokenizer):
    assert httpx.get(f"{url}/health").status_code == 200
    info = httpx.get(f"{url}/info").json()
    for key in ("model_id", "model_dtype", "model_device_type", "max_concurrent_requests", "max_input_tokens",
                "max_total_tokens", "max_best_of", "max_stop_sequences", "version", "router"):
        assert key in info
    assert info["model_id"] == "tiny" and info["max_input_tokens"] == 200
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "tiny"
    toks = httpx.post(f"{url}/tokenize", json={"inputs": "Hello world"}).json()
    assert [t["id"] for t in toks] == tiny_tokenizer("Hello world")["input_ids"]
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from outside


# ----------------------------------------------------------------------------- TGI clients


def test_text_generation_client(url, engine, tiny_tokenizer):
    Client = pytest.importorskip("text_generation", reason="pip install --no-deps text-generation").Client

    client = Client(url, timeout=60)
    res = client.generate("The king said", max_new_tokens=10, decoder_input_details=True)
    prompt = tiny_tokenizer("The king said")["input_ids"]
    ref = [c[0] for c, _ in engine.generate(prompt, max_tokens=10, temperature=0.0)]  # greedy, like TGI's default
    d = res.details
    assert [t.id for t in d.tokens] == ref[:len(d.tokens)]
    assert d.generated_tokens == len(d.tokens) and d.finish_reason.value in ("length", "eos_token")
    assert [t.id for t in d.prefill] == prompt and d.prefill[0].logprob is None
    assert all(t.logprob <= 0 for t in d.tokens) and all(t.logprob <= 0 for t in d.prefill[1:])

    streamed = list(client.generate_stream("The king said", max_new_tokens=10))
    assert streamed[-1].details is not None and streamed[-1].generated_text is not None
    assert [r.token.id for r in streamed] == [t.id for t in d.tokens]
    assert streamed[-1].generated_text == res.generated_text

    sampled = client.generate("The king said", max_new_tokens=8, do_sample=True, temperature=0.9, seed=5)
    again = client.generate("The king said", max_new_tokens=8, do_sample=True, temperature=0.9, seed=5)
    assert sampled.generated_text == again.generated_text and sampled.details.seed == 5


def test_tgi_generate_routes_and_stop_sequences(url):
    body = {"inputs": "Once upon a time", "parameters": {"max_new_tokens": 12, "details": True}}
    full = httpx.post(f"{url}/generate", json=body, timeout=60).json()
    assert isinstance(full, dict) and len(full["details"]["tokens"]) > 0
    text = full["generated_text"]
    assert httpx.post(f"{url}/", json=body, timeout=60).json()[0]["generated_text"] == text  # `/` answers a list
    if len(text) > 4:
        stop = text[2:4]
        cut = httpx.post(f"{url}/generate", json={**body, "parameters": {**body["parameters"], "stop": [stop]}},
                         timeout=60).json()
        assert cut["generated_text"].endswith(stop) and cut["details"]["finish_reason"] == "stop_sequence"
    events = []
    with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    assert events[-1]["generated_text"] == text and events[-1]["details"]["generated_tokens"] == len(events)


def test_huggingface_hub_inference_client(url, monkeypatch):
    from huggingface_hub import InferenceClient, constants

    # HF_HUB_OFFLINE=1 (set by CI) blocks every request the client makes, even to localhost.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    client = InferenceClient(base_url=url, timeout=60)
    out = client.text_generation("To be or not", max_new_tokens=6, details=True)
    assert out.details.generated_tokens > 0 and isinstance(out.generated_text, str)
    chunks = list(client.text_generation("To be or not", max_new_tokens=6, stream=True))
    assert "".join(chunks) == out.generated_text
    chat = client.chat_completion([{"role": "user", "content": "Hello!"}], max_tokens=8, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens > 0
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat_completion([{"role": "user", "content": "Hello!"}], max_tokens=8,
                                              temperature=0, stream=True)
                       if c.choices)
    assert streamed == chat.choices[0].message.content


def test_openai_client(url):
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60, max_retries=0)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"}]
    res = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0, logprobs=True)
    choice = res.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    assert len(choice.logprobs.content) <= 10
    stream = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert chunks[-1].usage.completion_tokens == res.usage.completion_tokens
    assert [m.id for m in client.models.list()] == ["tiny"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "hi"}])
    assert "role" in str(err.value)


# ----------------------------------------------------------------------------- validation and limits


@pytest.mark.parametrize("path, content, status, words", [
    ("/generate", b"{not json", 400, "not valid JSON"),
    ("/generate", b"\xff\xfe{}", 400, "UTF-8"),
    ("/generate", b"", 400, "empty"),
    ("/generate", b"[1, 2]", 422, "JSON object"),
    ("/generate", json.dumps({"inputs": 5}).encode(), 422, "inputs"),
    ("/generate", json.dumps({"inputs": "x", "parameters": {"temperature": -1}}).encode(), 422, "temperature"),
    ("/generate",
     json.dumps({"inputs": "x", "parameters": {"max_new_tokens": "ten"}}).encode(), 422, "max_new_tokens"),
    ("/generate", json.dumps({"inputs": "x", "parameters": {"max_new_tokens": 10_000}}).encode(), 422, "<= 48"),
    ("/generate", json.dumps({"inputs": "x", "parameters": {"top_p": 1.5}}).encode(), 422, "top_p"),
    ("/generate",
     json.dumps({"inputs": "x", "parameters": {"repetition_penalty": 1.3}}).encode(), 422, "not supported"),
    ("/generate", json.dumps({"inputs": "word " * 400}).encode(), 422, "the limit is 200"),
    ("/v1/chat/completions", json.dumps({"messages": []}).encode(), 400, "messages"),
    ("/v1/chat/completions", json.dumps({"messages": "hi"}).encode(), 400, "messages"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "tool", "content": "x"}]}).encode(), 400, "role"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": 3}]}).encode(), 400, "content"),
    ("/v1/chat/completions",
     json.dumps({"messages": [{"role": "user", "content": "a"}], "temperature": -0.5}).encode(), 400, "temperature"),
    ("/v1/chat/completions",
     json.dumps({"messages": [{"role": "user", "content": "a"}], "stream": "yes"}).encode(), 400, "stream"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "a"}], "n": 3}).encode(), 400, "n"),
    ("/v1/chat/completions",
     json.dumps({"messages": [{"role": "assistant", "content": "a"}]}).encode(), 400, "last message"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "a"},
                                                      {"role": "user", "content": "b"}]}).encode(), 400, "alternate"),
    ("/tokenize", json.dumps({"inputs": ""}).encode(), 422, "inputs"),
])
def test_malformed_requests_get_clear_4xx(url, path, content, status, words):
    r = httpx.post(f"{url}{path}", content=content, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    message = err["message"] if isinstance(err, dict) else err
    assert words.lower() in message.lower()


def test_body_size_limit(url):
    r = httpx.post(f"{url}/generate", content=b'{"inputs": "' + b"a" * (2 << 20) + b'"}', timeout=30)
    assert r.status_code == 413 and "limit" in r.json()["error"]


def slow_engine(tokenizer, delay=0.05):
    """A scripted model that never stops and takes `delay` s per step: requests stay in flight."""
    from test_engine import ScriptedLM

    class Slow(ScriptedLM):
        def forward(self, *args, **kwargs):
            time.sleep(delay)
            return super().forward(*args, **kwargs)

    return Engine(Slow({}, len(tokenizer)), tokenizer)  # always predicts token 0


def test_busy_then_503_and_disconnect_frees_the_slot(tiny_tokenizer):
    engine = slow_engine(tiny_tokenizer)
    engine.stop_ids = set()
    body = {"inputs": "The king", "parameters": {"max_new_tokens": 200}}
    with live_server(engine, Limits(max_new_tokens=200, max_concurrent=1, max_queue=0)) as base:
        with httpx.Client(timeout=60) as c:
            with c.stream("POST", f"{base}/generate_stream", json=body) as held:
                lines = held.iter_lines()
                next(lines)  # the first request is now generating (keep `lines` alive: dropping it closes the stream)
                assert httpx.get(f"{base}/health").json()["in_flight"] == 1
                busy = httpx.post(f"{base}/generate", json=body, timeout=30)
                assert busy.status_code == 503 and "busy" in busy.json()["error"]
            # the client closed its stream mid-way: the slot must come back long before 200 steps
        assert wait_idle(base)
        ok = httpx.post(f"{base}/generate", json={"inputs": "The king",
                                                  "parameters": {"max_new_tokens": 3}}, timeout=60)
        assert ok.status_code == 200


def test_queue_then_serve(tiny_tokenizer):
    engine = slow_engine(tiny_tokenizer, delay=0.01)
    engine.stop_ids = set()
    with live_server(engine, Limits(max_new_tokens=20, max_concurrent=1, max_queue=4)) as base:
        results = [None] * 3

        def call(i):
            results[i] = httpx.post(f"{base}/generate",
                                    json={"inputs": "a", "parameters": {"max_new_tokens": 10}}, timeout=60)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200, 200, 200]  # one row, the others waited in the queue


def test_request_timeout(tiny_tokenizer):
    engine = slow_engine(tiny_tokenizer)
    engine.stop_ids = set()
    with live_server(engine, Limits(max_new_tokens=200, request_timeout_s=0.5, max_prompt_tokens=50)) as base:
        r = httpx.post(f"{base}/generate", json={"inputs": "a", "parameters": {"max_new_tokens": 200}}, timeout=60)
        assert r.status_code == 504 and "longer than" in r.json()["error"]
        r = httpx.post(f"{base}/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}],
                                                            "max_tokens": 200, "stream": True}, timeout=60)
        assert "longer than" in r.text  # streaming: the error arrives as an event
        assert wait_idle(base)


# ----------------------------------------------------------------------------- slow and stuck clients


def endless_model(tokenizer, context=4096):
    """A tiny random model with a long context that never ends its answer: the rows of its stop tokens
    in the head are zero, so their logit (0) is always below the greedy pick. Its streams run their
    whole max_new_tokens in any process that loads it, long enough to fill a socket's buffers."""
    from nanochat_hf import NanoChatConfig, NanoChatForCausalLM

    torch.manual_seed(0)
    cfg = NanoChatConfig.from_depth(2, arch="modern", vocab_size=len(tokenizer), max_position_embeddings=context,
                                    head_dim=64)
    model = NanoChatForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for t in ("<|assistant_end|>", "<|bos|>"):
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(t)] = 0
    return model


def open_request(base: str, path: str, length: int, rcvbuf: int | None = None) -> socket.socket:
    """A raw socket that has sent the headers of `POST path` with a body of `length` bytes still to come."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf:  # before connecting: the TCP window is agreed at the handshake
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode())
    return sock


def non_reader(base: str, max_new_tokens: int) -> socket.socket:
    """A client that asks for a long stream and never reads a byte of it (small receive buffer)."""
    body = json.dumps({"inputs": "Once upon a time", "parameters": {"max_new_tokens": max_new_tokens}}).encode()
    sock = open_request(base, "/generate_stream", len(body), rcvbuf=4096)
    sock.sendall(body)
    return sock


def read_to_end(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """What the server sends until it closes the connection -> (data, whether it closed within `timeout`)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except ConnectionResetError:  # dropped with data still unsent: closed all the same
        return data, True
    except TimeoutError:
        return data, False
    return data, True


class Trickler(threading.Thread):
    """A client that sends its request body one byte every `every` seconds, then reads the answer."""

    def __init__(self, base: str, every: float = 1.0):
        super().__init__(daemon=True)
        self.body = json.dumps({"inputs": "Once upon a time, " * 4, "parameters": {"max_new_tokens": 8}}).encode()
        self.sock, self.every = open_request(base, "/generate", len(self.body)), every
        self.sent, self.answer, self.closed = 0, b"", False

    def run(self):
        try:
            for byte in self.body:
                if select.select([self.sock], [], [], self.every)[0]:  # an answer (or the close) came: stop sending
                    break
                self.sock.sendall(bytes([byte]))
                self.sent += 1
        except OSError:  # the server closed the connection on us
            pass
        self.answer, self.closed = read_to_end(self.sock, timeout=60)


def wait_health(base, timeout=30, **fields) -> bool:
    """Poll /health until every given field has the given value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(f"{base}/health").json()
        if all(health[k] == v for k, v in fields.items()):
            return True
        time.sleep(0.05)
    return False


def server_side_open(client: socket.socket) -> bool:
    """Whether this process (serving from a thread) still has the server's end of `client`'s connection open."""
    import psutil

    port = client.getsockname()[1]
    return any(c.raddr and c.raddr.port == port for c in psutil.Process().net_connections("tcp"))


def test_a_body_trickled_byte_by_byte_gets_408_and_is_disconnected(engine):
    with live_server(engine, Limits(body_timeout_s=1.0)) as base:
        slow = Trickler(base, every=0.2)
        start = time.monotonic()
        slow.start()
        slow.join(30)
        took = time.monotonic() - start
    assert slow.answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in slow.answer
    assert slow.closed and took < 5 and slow.sent < len(slow.body)  # cut off, not served after the whole body


def test_a_client_that_stops_reading_is_parked_then_cut_off(tiny_tokenizer):
    engine = Engine(endless_model(tiny_tokenizer), tiny_tokenizer)
    limits = Limits(max_new_tokens=4000, idle_timeout_s=2.0)
    app = create_app(engine, limits, model_id="tiny")
    with live_app(app) as base:
        stuck = non_reader(base, max_new_tokens=4000)
        assert wait_health(base, in_flight=1, parked=1), "the unread stream never left the batch"
        steps = app.state.server.scheduler.steps
        time.sleep(0.3)
        assert app.state.server.scheduler.steps == steps  # nothing is decoded for it while it waits
        assert wait_health(base, in_flight=0, parked=0), "the stuck client still holds its slot"
        assert not server_side_open(stuck), "the server still holds the stuck client's connection"
        data, closed = read_to_end(stuck, timeout=10)
        assert closed and b'"finish_reason"' not in data  # disconnected mid-stream, not finished
        r = httpx.post(f"{base}/generate", json={"inputs": "a", "parameters": {"max_new_tokens": 5}}, timeout=60)
        assert r.status_code == 200 and r.json()["generated_text"]



@contextlib.contextmanager
def serve_process(model_dir, log_path, *flags):
    """`nanochat-hf serve` in a subprocess (its own GIL, as in production); yields the base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "nanochat_hf.cli", "serve", "--model", str(model_dir), "--port", str(port),
           "--device", "cpu", *map(str, flags)]
    with open(log_path, "w") as log:  # a file, not a pipe: a chatty server must never block on a full pipe
        proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            assert proc.poll() is None, Path(log_path).read_text()[-3000:]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def stream_rates(base: str, clients: int, tokens: int) -> list[float]:
    """Tokens/s that each of `clients` concurrent /generate_stream clients receives (first to last token)."""
    times = [[] for _ in range(clients)]
    start = threading.Barrier(clients)

    def client(i):
        body = {"inputs": "Once upon a time", "parameters": {"max_new_tokens": tokens}}
        with httpx.Client(timeout=120) as c:
            start.wait()
            with c.stream("POST", f"{base}/generate_stream", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        times[i].append(time.perf_counter())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(len(ts) == tokens for ts in times), [len(ts) for ts in times]
    return [(len(ts) - 1) / (ts[-1] - ts[0]) for ts in times]


class SlowClients:
    """4 clients sending their body at 1 byte/s and 4 that never read the stream they asked for."""

    def __init__(self, base: str):
        self.base, self.trickling = base, [Trickler(base, every=1.0) for _ in range(4)]
        for t in self.trickling:
            t.start()
        self.stuck = [non_reader(base, max_new_tokens=4000) for _ in range(4)]

    def hanging(self) -> bool:
        """All 8 still connected and waiting (none cut off yet)."""
        return httpx.get(f"{self.base}/health").json()["parked"] == 4 and all(t.is_alive() for t in self.trickling)

    def hang_up(self):
        """All 8 close their connections, as clients that give up do."""
        for t in self.trickling:
            t.sock.shutdown(socket.SHUT_RDWR)
            t.join(10)
        for sock in [*self.stuck, *(t.sock for t in self.trickling)]:
            sock.close()


@pytest.mark.slow
def test_slow_and_stuck_clients_do_not_slow_the_others(tiny_tokenizer_dir, tiny_tokenizer, tmp_path):
    """8 streaming clients alone, then while 4 clients trickle their body at 1 byte/s and 4 never read
    their stream: the 8 keep their tokens/s (median of the clients) within 20%; after the timeouts the 8
    slow ones are disconnected and hold no slot.

    Other jobs on a shared machine change its speed from one second to the next, so the runs alternate
    (alone, with the slow clients, alone, ...) and each run with them is compared to the runs alone
    just before and after it; the median of those ratios is what must stay above 0.8."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_tokenizer_dir, model_dir)
    endless_model(tiny_tokenizer).save_pretrained(model_dir)
    clients, tokens, rounds, timeout = 8, 400, 5, 12
    rate = lambda: statistics.median(stream_rates(base, clients, tokens))  # noqa: E731
    with serve_process(model_dir, tmp_path / "serve.log", "--max-new-tokens", 4000, "--body-timeout", timeout,
                       "--idle-timeout", timeout) as base:
        stream_rates(base, clients, 32)  # warm-up
        alone, crowded = [rate()], []
        for i in range(rounds):
            slow = SlowClients(base)
            assert wait_health(base, in_flight=4, parked=4), "the unread streams never left the batch"
            crowded.append(rate())
            assert slow.hanging(), "the slow clients were cut off before the measurement ended: raise `timeout`"
            if i < rounds - 1:  # the last ones stay, to be cut off by the timeouts
                slow.hang_up()
                assert wait_health(base, in_flight=0, parked=0), "clients that hung up still hold slots"
                alone.append(rate())
        ratios = [c / statistics.mean(alone[i:i + 2]) for i, c in enumerate(crowded)]
        print(f"\ntokens/s per streaming client (median of {clients}), alone: {[round(a) for a in alone]}, "
              f"with 8 slow clients hanging: {[round(c) for c in crowded]}; ratios {[f'{r:.0%}' for r in ratios]}")
        assert statistics.median(ratios) >= 0.8, ratios

        for t in slow.trickling:
            t.join(timeout + 30)
            assert t.answer.startswith(b"HTTP/1.1 408") and t.closed and t.sent < len(t.body)
        assert wait_health(base, timeout=timeout + 30, in_flight=0, parked=0), "the stuck clients still hold slots"
        for sock in slow.stuck:
            data, closed = read_to_end(sock, timeout=10)
            assert closed and b'"finish_reason"' not in data
        r = httpx.post(f"{base}/generate", json={"inputs": "a", "parameters": {"max_new_tokens": 5}}, timeout=60)
        assert r.status_code == 200
    assert "Traceback" not in (tmp_path / "serve.log").read_text()  # clients hanging up are no server error


def test_tool_calls_through_the_chat_api(tiny_tokenizer):
    from test_engine import scripted_engine

    from nanochat_hf.chat_format import render_for_completion

    msgs = [{"role": "user", "content": "What is 7 times 6?"}]
    prompt = render_for_completion(tiny_tokenizer, msgs)
    engine, _, _ = scripted_engine(tiny_tokenizer, prompt[-1], "7*6")
    with live_server(engine) as base:
        res = httpx.post(f"{base}/v1/chat/completions", json={"messages": msgs, "temperature": 0}, timeout=60).json()
        msg = res["choices"][0]["message"]
        assert msg["content"] == "[calculator: 7*6 = 42]" and res["choices"][0]["finish_reason"] == "stop"
        assert msg["parts"] == [{"type": "python", "text": "7*6"}, {"type": "python_output", "text": "42"}]
        kinds = []
        with httpx.stream("POST", f"{base}/v1/chat/completions",
                          json={"messages": msgs, "stream": True}, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    kinds.append(delta.get("nanochat", {}).get("type"))
        assert "python" in kinds and "python_output" in kinds
        # the parts go back in as history and render to the same tokens
        follow = msgs + [{"role": "assistant", "content": msg["parts"]}, {"role": "user", "content": "thanks"}]
        assert httpx.post(f"{base}/v1/chat/completions",
                          json={"messages": follow, "max_tokens": 2}, timeout=60).status_code == 200


def test_mailbox_wakes_the_loop_once_per_burst_and_keeps_order():
    """A decode step's events (one per row) reach their queues in order with a single loop wake-up."""
    import asyncio

    from nanochat_hf.serve.app import Mailbox

    async def main():
        loop = asyncio.get_running_loop()
        box = Mailbox(loop)
        wakeups = []
        drain = box._drain
        box._drain = lambda: (wakeups.append(1), drain())
        queues = [asyncio.Queue() for _ in range(3)]

        def step():  # what the scheduler thread does in one step
            for i in range(12):
                box.post(queues[i % 3], i)

        worker = threading.Thread(target=step)
        worker.start()
        worker.join()  # the loop is busy meanwhile, as it is while it writes other streams
        await asyncio.sleep(0.05)
        return wakeups, [[q.get_nowait() for _ in range(q.qsize())] for q in queues]

    wakeups, got = asyncio.run(main())
    assert got == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    assert len(wakeups) == 1



# ----------------------------------------------------------------------------- access control

KEY = "test-key-4f2a9c"
LIMITS = Limits(max_prompt_tokens=200, max_new_tokens=48)


@pytest.fixture(scope="module")
def keyed_url(engine):
    with live_server(engine, LIMITS, Access.for_bind("127.0.0.1", api_key=KEY)) as base:
        yield base


def test_openai_client_with_and_without_the_key(keyed_url):
    import openai

    msgs = [{"role": "user", "content": "Hi"}]
    good = openai.OpenAI(base_url=f"{keyed_url}/v1", api_key=KEY, timeout=60, max_retries=0)
    res = good.chat.completions.create(model="tiny", messages=msgs, max_tokens=4)
    assert res.choices[0].message.role == "assistant"
    assert [m.id for m in good.models.list()] == ["tiny"]
    wrong = openai.OpenAI(base_url=f"{keyed_url}/v1", api_key=KEY + "x", timeout=60, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.chat.completions.create(model="tiny", messages=msgs, max_tokens=4)
    assert "API key" in str(err.value)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_inference_client_with_and_without_the_key(keyed_url, monkeypatch):
    from huggingface_hub import InferenceClient, constants
    from huggingface_hub.errors import HfHubHTTPError, UnknownError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # CI's offline switch blocks even localhost
    good = InferenceClient(base_url=keyed_url, token=KEY, timeout=60)
    assert isinstance(good.text_generation("To be", max_new_tokens=4), str)
    assert good.chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4).usage.completion_tokens > 0
    for token in ("wrong", KEY[:-1]):  # (the client insists on some token; no header at all is tested below)
        bad = InferenceClient(base_url=keyed_url, token=token, timeout=60)
        with pytest.raises(UnknownError, match="API key"):  # TGI's error shape, parsed by the client
            bad.text_generation("To be", max_new_tokens=4)
        with pytest.raises(HfHubHTTPError) as err:
            bad.chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4)
        assert err.value.response.status_code == 401


def test_text_generation_client_with_and_without_the_key(keyed_url):
    text_generation = pytest.importorskip("text_generation", reason="pip install --no-deps text-generation")

    good = text_generation.Client(keyed_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert good.generate("The king said", max_new_tokens=4).details.generated_tokens > 0
    assert list(good.generate_stream("The king said", max_new_tokens=4))[-1].details is not None
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(text_generation.errors.UnknownError, match="API key"):
            text_generation.Client(keyed_url, headers=headers, timeout=60).generate("The king said", max_new_tokens=4)


@pytest.mark.parametrize("method, path", [
    ("GET", "/info"), ("GET", "/v1/models"), ("POST", "/"), ("POST", "/generate"), ("POST", "/generate_stream"),
    ("POST", "/tokenize"), ("POST", "/v1/chat/completions"), ("GET", "/docs"), ("GET", "/openapi.json"),
])
def test_every_route_but_page_and_health_asks_for_the_key(keyed_url, method, path):
    body = {"inputs": "a", "messages": [{"role": "user", "content": "a"}], "parameters": {"max_new_tokens": 2},
            "max_tokens": 2}
    for auth in (None, "Bearer wrong", f"Basic {KEY}", KEY, f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", "Bearer"):
        headers = {"Authorization": auth} if auth else {}
        r = httpx.request(method, f"{keyed_url}{path}", json=body, headers=headers, timeout=30)
        assert r.status_code == 401, (auth, r.text)
        assert r.headers["www-authenticate"] == "Bearer" and "\n" not in r.text
        err = r.json()["error"]
        assert "API key" in (err["message"] if path.startswith("/v1/") else err)
    ok = httpx.request(method, f"{keyed_url}{path}", json=body, headers={"Authorization": f"bearer {KEY}"}, timeout=30)
    assert ok.status_code == 200, ok.text


def test_health_and_page_stay_open_with_a_key(keyed_url):
    assert httpx.get(f"{keyed_url}/health").json()["status"] == "ok"
    assert "<html" in httpx.get(f"{keyed_url}/").text


@pytest.mark.parametrize("host, status", [
    ("evil.example", 421), ("evil.example:{port}", 421), ("localhost.evil.example", 421), ("127.0.0.1.nip.io", 421),
    ("[::1]evil", 421), ("", 421), ("chat.lan", 200),
    ("localhost", 200), ("LocalHost:{port}", 200), ("127.0.0.1", 200), ("127.0.0.1:{port}", 200),
    ("[::1]:{port}", 200),
])
def test_host_header_must_name_this_server(engine, host, status):
    access = Access.for_bind("127.0.0.1", allowed_hosts=("Chat.lan",))
    with live_server(engine, LIMITS, access) as base:
        host = host.format(port=base.rsplit(":", 1)[1])
        for path in ("/health", "/info", "/v1/models"):
            r = httpx.get(f"{base}{path}", headers={"Host": host}, timeout=30)
            assert r.status_code == status, (path, r.text)
            if status == 421:
                err = r.json()["error"]
                assert "--allowed-hosts" in (err["message"] if path.startswith("/v1/") else err)


def test_forged_host_is_refused_before_the_key_is_looked_at(keyed_url):
    r = httpx.get(f"{keyed_url}/info", headers={"Host": "rebind.example", "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 421


def test_allowed_names_follow_the_bind_address():
    every = Access.for_bind("0.0.0.0", allowed_hosts=("box.lan",))
    assert all(every.host_allowed(h) for h in ("10.0.0.7:8000", "[fe80::1]:8000", "localhost:8000", "box.lan"))
    assert not every.host_allowed("attacker.example:8000")
    one = Access.for_bind("192.168.1.5")
    assert one.host_allowed("192.168.1.5:8000") and not one.host_allowed("10.0.0.7") \
        and not one.host_allowed("evil.example")
    assert Access.for_bind("::1").host_allowed("[::1]:8000") and Access.for_bind("localhost").host_allowed("127.0.0.1")


def test_no_cors_headers_unless_an_origin_is_given(url, engine):
    preflight = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    plain = httpx.get(f"{url}/v1/models", headers={"Origin": "http://ui.example"})
    assert plain.status_code == 200 and not any(h.startswith("access-control-") for h in plain.headers)
    assert "access-control-allow-origin" not in httpx.options(f"{url}/v1/chat/completions", headers=preflight).headers

    access = Access.for_bind("127.0.0.1", api_key=KEY, allow_origin="http://ui.example")
    with live_server(engine, LIMITS, access) as base:
        pre = httpx.options(f"{base}/v1/chat/completions", headers=preflight)  # a preflight carries no key
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://ui.example"
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        auth = {"Authorization": f"Bearer {KEY}"}
        mine = httpx.get(f"{base}/v1/models", headers={**auth, "Origin": "http://ui.example"})
        assert mine.headers["access-control-allow-origin"] == "http://ui.example"
        other = httpx.get(f"{base}/v1/models", headers={**auth, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        assert httpx.options(f"{base}/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"}) \
            .headers.get("access-control-allow-origin") is None


# ----------------------------------------------------------------------------- `nanochat-hf serve` flags


@pytest.fixture
def fake_run(monkeypatch, engine):
    """main() with the engine loader and uvicorn.run stubbed: records the app it would serve, and where."""
    import uvicorn

    from nanochat_hf import engine as engine_module

    ran = {}
    monkeypatch.setattr(engine_module, "load_engine", lambda *a, **k: engine)
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: ran.update(app=app, host=host, port=port))
    monkeypatch.delenv("NANOCHAT_HF_API_KEY", raising=False)
    return ran


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "chat.example.com"])
def test_serve_refuses_a_network_host_without_a_key(fake_run, capsys, host):
    from nanochat_hf.serve import main

    assert main(["--model", "tiny", "--host", host]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--api-key" in err and "--no-auth" in err and "NANOCHAT_HF_API_KEY" in err
    assert fake_run == {}  # refused before loading anything
    assert main(["--model", "tiny", "--host", host, "--no-auth"]) == 0 and fake_run["host"] == host


def test_serve_flag_contradictions(fake_run, capsys, monkeypatch):
    from nanochat_hf.serve import main

    assert main(["--model", "tiny", "--api-key", KEY, "--no-auth"]) == 2
    monkeypatch.setenv("NANOCHAT_HF_API_KEY", KEY)
    assert main(["--model", "tiny", "--no-auth"]) == 2
    assert main(["--model", "tiny", "--api-key", KEY, "--allow-origin", "*"]) == 2
    assert all("nanochat-hf serve:" in line for line in capsys.readouterr().err.strip().splitlines())
    assert fake_run == {}


@pytest.mark.parametrize("source", ["flag", "env"])
def test_serve_key_from_flag_or_environment(fake_run, monkeypatch, capsys, source):
    from nanochat_hf.serve import main

    argv = ["--model", "tiny", "--host", "0.0.0.0", "--allowed-hosts", "box.lan, chat.lan",
            "--allow-origin", "http://ui.example/"]
    if source == "env":
        monkeypatch.setenv("NANOCHAT_HF_API_KEY", KEY)
    else:
        argv += ["--api-key", KEY]
    assert main(argv) == 0
    assert KEY not in capsys.readouterr().out  # the banner does not print the key
    with live_app(fake_run["app"]) as base:
        assert httpx.get(f"{base}/info").status_code == 401
        assert httpx.get(f"{base}/info", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        for host, status in (("chat.lan:8000", 200), ("box.lan", 200), ("10.1.2.3:8000", 200), ("evil.example", 421)):
            assert httpx.get(f"{base}/health", headers={"Host": host}).status_code == status, host
        cors = httpx.get(f"{base}/health", headers={"Origin": "http://ui.example"})
        assert cors.headers["access-control-allow-origin"] == "http://ui.example"


def test_serve_timeout_flags(fake_run, capsys):
    from nanochat_hf.serve import main

    assert main(["--model", "tiny", "--body-timeout", "3", "--idle-timeout", "4.5"]) == 0
    limits = fake_run["app"].state.server.limits
    assert (limits.body_timeout_s, limits.idle_timeout_s) == (3.0, 4.5)
    assert main(["--model", "tiny", "--idle-timeout", "0"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
