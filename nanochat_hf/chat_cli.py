"""Chat with a model in the terminal.

    nanochat-hf chat --model runs/tiny/sft                     # interactive: history, `clear`, `quit`
    nanochat-hf chat --model user/nanochat-d20 -p "Why is the sky blue?"   # one answer, then exit
    nanochat-hf chat --model runs/tiny/sft --temperature 0.6 --top-k 50 --max-new-tokens 256

The conversation is kept as messages (tool calls included, as message parts) and re-rendered
with the tokenizer's chat template every turn, so what the model sees is exactly what it was
trained on. Answers stream token by token; a calculator call shows as `[calculator: 12*3 = 36]`.
"""

from __future__ import annotations

import argparse
import sys

from nanochat_hf.engine import load_engine
from nanochat_hf.rendering import ChatRenderer, parse_assistant


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nanochat-hf chat", description="Chat with a nanochat_hf model in the terminal.")
    p.add_argument("--model", required=True, help="model folder (a stage's output) or Hub id")
    p.add_argument("-p", "--prompt", default=None, help="answer this one prompt and exit")
    p.add_argument("--system", default=None, help="optional system message (merged into the first user turn)")
    p.add_argument("-t", "--temperature", type=float, default=0.6)  # 0.6, 50, 256: nanochat's chat_cli defaults
    p.add_argument("-k", "--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random each turn)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:1 ... (default: cuda if available)")
    return p


def answer(engine, messages: list[dict], args, out=None) -> list[dict]:
    """Generate the assistant's reply to `messages`, streaming it to `out`; returns the reply's parts."""
    from nanochat_hf.chat_format import render_for_completion

    out = out or sys.stdout
    prompt = render_for_completion(engine.tokenizer, messages)
    renderer, tokens = ChatRenderer(engine.tokenizer), []
    for column, _ in engine.generate(prompt, max_tokens=args.max_new_tokens, temperature=args.temperature,
                                     top_k=args.top_k, top_p=args.top_p, seed=args.seed):
        tokens.append(column[0])
        out.write(renderer.push(column[0]))
        out.flush()
        if column[0] in engine.stop_ids:
            break
    out.write("\n")
    return parse_assistant(engine.tokenizer, tokens)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.temperature < 0 or args.max_new_tokens < 1 or (args.top_k is not None and args.top_k < 0):
        print("nanochat-hf chat: --temperature must be >= 0, --max-new-tokens >= 1, --top-k >= 0", file=sys.stderr)
        return 2
    try:
        engine = load_engine(args.model, device=args.device)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"nanochat-hf chat: {err}", file=sys.stderr)
        return 2
    system = [{"role": "system", "content": args.system}] if args.system else []

    if args.prompt is not None:
        answer(engine, system + [{"role": "user", "content": args.prompt}], args)
        return 0

    print("nanochat_hf chat -- type 'clear' for a new conversation, 'quit' to leave.")
    messages: list[dict] = []
    while True:
        try:
            text = input("\nUser: ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if text.lower() in ("quit", "exit"):
            return 0
        if text.lower() == "clear":
            messages = []
            print("(conversation cleared)")
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        print("Assistant: ", end="", flush=True)
        try:
            parts = answer(engine, system + messages, args)
        except (KeyboardInterrupt, ValueError) as err:  # Ctrl-C stops this answer, not the session
            stopped = isinstance(err, KeyboardInterrupt)  # else e.g. the conversation outgrew the context
            print("\n(stopped)" if stopped else f"\n(error: {err}; type 'clear' to start over)")
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": parts or ""})


if __name__ == "__main__":
    sys.exit(main())
