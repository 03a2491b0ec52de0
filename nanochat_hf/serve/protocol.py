"""Request parsing and validation for the TGI and OpenAI routes.

By hand rather than pydantic, so that every malformed request gets one sentence naming the field and
what is allowed, in the error shape its client library reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from nanochat_hf.sampling import SamplingParams


class ApiError(Exception):
    """An HTTP error with a message for the client (kind = TGI's error_type)."""

    def __init__(self, status: int, message: str, kind: str = "validation"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def validation_error(message: str) -> ApiError:
    """422: the request is well-formed JSON but asks for something not allowed."""
    return ApiError(422, message, "validation")


@dataclass
class Limits:
    """What one request may ask for, and how much the server takes on at once."""

    max_prompt_tokens: int = 1536
    max_new_tokens: int = 512
    max_concurrent: int = 32  # rows decoded together
    max_queue: int = 64  # requests waiting for a row; beyond this: 503
    request_timeout_s: float = 120.0  # the whole request: waiting for a row + generation
    max_body_bytes: int = 1 << 20  # 1 MiB
    max_stop_sequences: int = 4
    body_timeout_s: float = 30.0  # the request body must arrive within this; beyond: 408, connection closed
    idle_timeout_s: float = 30.0  # a stream whose client reads nothing for this long is cut off
    max_unread_tokens: int = 256  # a stream this far ahead of its client leaves the batch until it catches up


def parse_json_body(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, f"the request body is not valid UTF-8 (byte {err.start}); send UTF-8 JSON") from None
    if not text.strip():
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise ApiError(400, f"the request body is not valid JSON: {err.msg} at line {err.lineno} column "
                            f"{err.colno}") from None
    if not isinstance(body, dict):
        raise validation_error(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


# ----------------------------------------------------------------------------- field checks


def _number(d: dict, key: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
            name: str | None = None, integer: bool = False) -> float | None:
    value, name = d.get(key), name or key
    if value is None:
        return None
    if integer and isinstance(value, float) and value.is_integer():
        value = int(value)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not (integer or math.isfinite(value)):
        raise validation_error(f"`{name}` must be {'an integer' if integer else 'a number'}, got "
                               f"{json.dumps(value)[:40]}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise validation_error(f"`{name}` must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise validation_error(f"`{name}` must be <= {hi}, got {value}")
    return value


def _int(d: dict, key: str, lo: int | None = None, hi: int | None = None, name: str | None = None) -> int | None:
    return _number(d, key, lo, hi, name=name, integer=True)


def _bool(d: dict, key: str, default: bool = False) -> bool:
    value = d.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise validation_error(f"`{key}` must be true or false, got {json.dumps(value)[:40]}")
    return value


def _stops(value, limits: Limits, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise validation_error(f"`{name}` must be a non-empty string or a list of them")
    if len(value) > limits.max_stop_sequences:
        raise validation_error(f"`{name}` may hold at most {limits.max_stop_sequences} sequences, got {len(value)}")
    return value


def _unsupported(d: dict, allowed_defaults: dict, where: str):
    """Parameters we do not implement are fine at their neutral value and refused otherwise."""
    for key, neutral in allowed_defaults.items():
        value = d.get(key)
        if value is not None and value not in neutral:
            raise validation_error(f"`{key}` is not supported by nanochat_hf serve ({where}); leave it unset")


# ----------------------------------------------------------------------------- TGI


@dataclass
class TGIRequest:
    inputs: str
    params: SamplingParams
    stream: bool
    details: bool
    decoder_input_details: bool
    return_full_text: bool
    truncate: int | None
    stop: list[str]


def parse_tgi(body: dict, limits: Limits, stream: bool | None = None) -> TGIRequest:
    inputs = body.get("inputs")
    if not isinstance(inputs, str) or not inputs:
        raise validation_error("`inputs` must be a non-empty string")
    p = body.get("parameters") or {}
    if not isinstance(p, dict):
        raise validation_error("`parameters` must be a JSON object")
    _unsupported(p, {"best_of": (1,), "repetition_penalty": (1, 1.0), "frequency_penalty": (0, 0.0),
                     "typical_p": (1, 1.0), "watermark": (False,), "top_n_tokens": (0,), "grammar": (),
                     "adapter_id": ()}, "TGI parameters")
    max_new = _int(p, "max_new_tokens", 1, limits.max_new_tokens, name="parameters.max_new_tokens")
    temperature = _number(p, "temperature", 0, name="parameters.temperature")
    top_k = _int(p, "top_k", 0, name="parameters.top_k")
    top_p = _number(p, "top_p", 0, 1, lo_open=True, name="parameters.top_p")
    seed = _int(p, "seed", 0, 2**63 - 1, name="parameters.seed")
    do_sample = _bool(p, "do_sample", default=False)
    # TGI: greedy unless sampling is asked for (do_sample, or any sampling knob).
    sampling = (do_sample or any(v is not None for v in (top_k, top_p))
                or (temperature not in (None, 1.0) and temperature > 0))
    params = SamplingParams(max_tokens=max_new or min(100, limits.max_new_tokens),
                            temperature=(temperature if temperature is not None else 1.0) if sampling else 0.0,
                            top_k=top_k, top_p=top_p, seed=seed)
    stream_flag = _bool(body, "stream") if stream is None else stream
    return TGIRequest(inputs, params, stream_flag, _bool(p, "details"), _bool(p, "decoder_input_details"),
                      _bool(p, "return_full_text"), _int(p, "truncate", 1, name="parameters.truncate"),
                      _stops(p.get("stop"), limits, "parameters.stop"))


# ----------------------------------------------------------------------------- OpenAI chat


@dataclass
class ChatRequest:
    messages: list[dict]
    params: SamplingParams
    stream: bool
    include_usage: bool
    logprobs: bool
    stop: list[str]
    model: str | None


ROLES = ("system", "user", "assistant")
ASSISTANT_PART_TYPES = ("text", "python", "python_output")


def _content(message: dict, i: int):
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise validation_error(f"messages[{i}].content[{j}] must be an object with a string `text`")
            kind = part.get("type", "text")
            allowed = ASSISTANT_PART_TYPES if role == "assistant" else ("text",)
            if kind not in allowed:
                raise validation_error(f"messages[{i}].content[{j}] has type {kind!r}; a {role} message allows "
                                       f"{', '.join(allowed)}")
            parts.append({"type": kind, "text": part["text"]})
        if role != "assistant":  # user/system: OpenAI's list of text parts is just the joined text
            return "".join(p["text"] for p in parts)
        return parts
    raise validation_error(f"messages[{i}].content must be a string or a non-empty list of text parts")


def parse_chat(body: dict, limits: Limits) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise validation_error("`messages` must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise validation_error(f"messages[{i}] must be an object with `role` and `content`")
        if m.get("role") not in ROLES:
            raise validation_error(f"messages[{i}].role is {json.dumps(m.get('role'))[:40]}; use one of "
                                   f"{', '.join(ROLES)}")
        out.append({"role": m["role"], "content": _content(m, i)})
    if out[-1]["role"] != "user":
        raise validation_error("the last message must be from the user (the model answers it)")
    _unsupported(body, {"n": (1,), "tools": (), "tool_choice": ("none",), "response_format": (),
                        "frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "logit_bias": (),
                        "top_logprobs": (0,)}, "chat completions")
    max_tokens = _int(body, "max_completion_tokens", 1, limits.max_new_tokens)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1, limits.max_new_tokens)
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1, lo_open=True)
    top_k = _int(body, "top_k", 0)  # not OpenAI's, but TGI's Messages API and our page send it
    seed = _int(body, "seed", 0, 2**63 - 1)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise validation_error("`stream_options` must be an object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise validation_error("`model` must be a string")
    params = SamplingParams(max_tokens=max_tokens or limits.max_new_tokens,
                            temperature=1.0 if temperature is None else temperature, top_k=top_k, top_p=top_p,
                            seed=seed)
    return ChatRequest(out, params, _bool(body, "stream"), _bool(options, "include_usage"), _bool(body, "logprobs"),
                       _stops(body.get("stop"), limits, "stop"), model)
