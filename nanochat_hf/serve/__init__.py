"""`nanochat-hf serve`: the web chat page plus TGI- and OpenAI-compatible HTTP routes.

    nanochat-hf serve --model runs/tiny/sft --host 127.0.0.1 --port 8000
    nanochat-hf serve --model user/nanochat-d20 --max-concurrent 32 --max-new-tokens 512 --request-timeout 120
    nanochat-hf serve --model runs/tiny/sft --compile     # torch.compile the decode step (warm-up compiles)

Routes: GET / (chat page), GET /health, GET /info, POST / and /generate (TGI JSON), POST
/generate_stream (TGI SSE), POST /v1/chat/completions (OpenAI, streaming or not), GET /v1/models,
POST /tokenize. Clients: `text_generation.Client("http://127.0.0.1:8000")`,
`huggingface_hub.InferenceClient(base_url="http://127.0.0.1:8000")`,
`openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-")`, or a browser.
"""

from __future__ import annotations

import argparse
import sys

from nanochat_hf.serve.protocol import Limits

__all__ = ["create_app", "Limits", "main"]


def create_app(*args, **kwargs):
    from nanochat_hf.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    d = Limits()
    p = argparse.ArgumentParser(prog="nanochat-hf serve", description="Serve a nanochat_hf model over HTTP (chat page, TGI, OpenAI).")
    p.add_argument("--model", required=True, help="model folder (a stage's output) or Hub id")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all; mind that there is no auth)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-id", default=None, help="name reported by /info and /v1/models (default: the --model value)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:1 ... (default: cuda if available)")
    p.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--max-concurrent", type=int, default=d.max_concurrent, help="requests decoded together (batch rows)")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="requests waiting for a row before 503s start")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s, help="seconds per request (queue + generation)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step: faster per token once warm; each new batch shape compiles "
                        "first (tens of seconds on a small CPU)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    limits = Limits(args.max_prompt_tokens, args.max_new_tokens, args.max_concurrent, args.max_queue,
                    args.request_timeout, args.max_body_bytes)
    if min(limits.max_prompt_tokens, limits.max_new_tokens, limits.max_concurrent) < 1 or limits.max_queue < 0 \
            or limits.request_timeout_s <= 0 or limits.max_body_bytes < 1024:
        print("nanochat-hf serve: limits must be positive (--max-body-bytes >= 1024, --max-queue >= 0)", file=sys.stderr)
        return 2
    from nanochat_hf.engine import load_engine

    try:
        engine = load_engine(args.model, device=args.device, compile=args.compile)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"nanochat-hf serve: {err}", file=sys.stderr)
        return 2
    import uvicorn

    app = create_app(engine, limits, model_id=args.model_id or args.model)
    print(f"nanochat_hf serving {args.model} on http://{args.host}:{args.port}/  (chat page at /, API docs at /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_keep_alive=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
