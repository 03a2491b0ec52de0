"""`nanochat-hf serve`: the web chat page plus TGI- and OpenAI-compatible HTTP routes.

    nanochat-hf serve --model runs/tiny/sft --host 127.0.0.1 --port 8000
    nanochat-hf serve --model user/nanochat-d20 --max-concurrent 32 --max-new-tokens 512 --request-timeout 120

Routes: GET / (chat page), /health, /info, /v1/models; POST / and /generate (TGI JSON), /generate_stream
(TGI SSE), /v1/chat/completions (OpenAI, streaming or not), /tokenize. Clients: text_generation,
huggingface_hub's InferenceClient, openai (base_url=".../v1"), or a browser.
Access: `--api-key KEY` (or $NANOCHAT_HF_API_KEY) makes every route but GET / and /health ask for
`Authorization: Bearer KEY`; a non-loopback --host refuses to start without one unless --no-auth. A Host
header that is not the server's name gets 421 (DNS rebinding); --allowed-hosts adds names. No CORS headers
unless --allow-origin names the one origin that gets them.
"""

from __future__ import annotations

import argparse
import os
import sys

from nanochat_hf.serve.protocol import Limits

__all__ = ["create_app", "Limits", "main"]
KEY_ENV = "NANOCHAT_HF_API_KEY"


def create_app(*args, **kwargs):
    from nanochat_hf.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    d = Limits()
    p = argparse.ArgumentParser(prog="nanochat-hf serve",
                                description="Serve a nanochat_hf model over HTTP (chat page, TGI, OpenAI).")
    p.add_argument("--model", required=True, help="model folder (a stage's output) or Hub id")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (0.0.0.0 for all: needs --api-key, or --no-auth)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help=f"require `Authorization: Bearer KEY` on every route but / and /health "
                        f"(default: ${KEY_ENV}, which keeps the key out of shell history and ps)")
    p.add_argument("--no-auth", action="store_true", help="serve a non-loopback --host without a key, knowingly")
    p.add_argument("--allowed-hosts", default="",
                   help="extra Host names to answer to, comma-separated (a DNS name, a proxy's name); "
                        "others get 421")
    p.add_argument("--allow-origin", default=None,
                   help="one browser origin (https://app.example.com) allowed to call the API cross-origin "
                        "(default: no CORS headers)")
    p.add_argument("--model-id", default=None, help="name reported by /info and /v1/models "
                                                    "(default: the --model value)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:1 ... (default: cuda if available)")
    p.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--max-concurrent", type=int, default=d.max_concurrent, help="requests decoded "
                                                                                "together (batch rows)")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="requests waiting for a row before 503s start")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s,
                   help="seconds per request (queue + generation)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--body-timeout", type=float, default=d.body_timeout_s,
                   help="seconds a client has to send its request body; a slower one gets 408 and is disconnected")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s,
                   help="seconds a streaming client may read nothing before it is disconnected and its request "
                        "cancelled")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step: faster per token once warm; each new batch shape compiles "
                        "first (tens of seconds on a small CPU)")
    return p


def _access_problem(args) -> str | None:
    """One line saying why these access settings are refused, or None."""
    from nanochat_hf.serve.app import is_loopback

    if args.api_key and args.no_auth:
        return "--no-auth and an API key (--api-key or $NANOCHAT_HF_API_KEY) contradict each other; drop one"
    if not args.api_key and not args.no_auth and not is_loopback(args.host):
        return (f"--host {args.host} is reachable from other machines: set --api-key (or ${KEY_ENV}), "
                "or pass --no-auth to serve without a key anyway")
    if args.allow_origin is not None and "://" not in args.allow_origin:
        return f"--allow-origin takes one origin such as https://app.example.com, not {args.allow_origin!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.api_key = args.api_key or os.environ.get(KEY_ENV) or None
    problem = _access_problem(args)
    if problem:
        print(f"nanochat-hf serve: {problem}", file=sys.stderr)
        return 2
    limits = Limits(args.max_prompt_tokens, args.max_new_tokens, args.max_concurrent, args.max_queue,
                    args.request_timeout, args.max_body_bytes, body_timeout_s=args.body_timeout,
                    idle_timeout_s=args.idle_timeout)
    if min(limits.max_prompt_tokens, limits.max_new_tokens, limits.max_concurrent) < 1 or limits.max_queue < 0 \
            or min(limits.request_timeout_s, limits.body_timeout_s, limits.idle_timeout_s) <= 0 \
            or limits.max_body_bytes < 1024:
        print("nanochat-hf serve: limits and timeouts must be positive (--max-body-bytes >= 1024, --max-queue >= 0)",
              file=sys.stderr)
        return 2
    from nanochat_hf.engine import load_engine

    try:
        engine = load_engine(args.model, device=args.device, compile=args.compile)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"nanochat-hf serve: {err}", file=sys.stderr)
        return 2
    import uvicorn

    from nanochat_hf.serve.app import Access

    hosts = tuple(h for h in args.allowed_hosts.split(",") if h.strip())
    origin = args.allow_origin.rstrip("/") if args.allow_origin else None  # browsers send it without the slash
    app = create_app(engine, limits, model_id=args.model_id or args.model,
                     access=Access.for_bind(args.host, args.api_key, hosts, origin))
    guard = "API key required" if args.api_key else "no API key"
    print(f"nanochat_hf serving {args.model} on http://{args.host}:{args.port}/  (chat page at /, API docs at /docs; "
          f"{guard})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_keep_alive=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
