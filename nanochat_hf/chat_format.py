"""nanochat's conversation format: the schema a conversation follows, and its rendering into token ids.

    {"messages": [{"role": "user", "content": "What is 12*7?"},
                  {"role": "assistant", "content": [{"type": "text", "text": "Let me compute it: "},
                                                    {"type": "python", "text": "12*7"},          # tool call
                                                    {"type": "python_output", "text": "84"},     # forced in
                                                    {"type": "text", "text": "\\n#### 84"}]}]}

`content` is a string or a list of parts, so a dataset's column uses the `datasets.Json` feature (Arrow
cannot hold both in one plain column). The tokenizer's chat template (`chat_template.jinja`) renders it
as nanochat does, with `{% generation %}` spans that give nanochat's training mask.
"""

from __future__ import annotations

from pathlib import Path

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "python", "python_output")


def messages_features():
    """`messages`: list of {role: string, content: Json} (content is a string or a list of parts)."""
    from datasets import Features, Json, List, Value

    return Features({"messages": List({"role": Value("string"), "content": Json()})})


def check_conversation(messages, dataset: str = "dataset", row: int | str = "?") -> list[dict]:
    """Validate one training conversation; the error names the dataset and row.

    An optional system message, then user/assistant alternating (starting with user, at least one
    assistant turn). User and system content are strings; assistant content is a string or parts.
    Returns the messages as plain {role, content} dicts (extra keys from the source are dropped).
    """
    where = f"{dataset} row {row}"
    if isinstance(messages, dict) and "messages" in messages:
        messages = messages["messages"]
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}} dicts, "
                         f"got {messages!r:.80}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"{where}: message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ValueError(f"{where}: message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if role == "assistant" and isinstance(content, (list, tuple)):
            for part in content:
                if (not isinstance(part, dict) or part.get("type") not in PART_TYPES
                        or not isinstance(part.get("text"), str)):
                    raise ValueError(f"{where}: message {i} has a bad part {part!r:.80}; parts are "
                                     f"{{'type': {'|'.join(PART_TYPES)}, 'text': str}}")
            content = [{"type": p["type"], "text": p["text"]} for p in content]
        elif not isinstance(content, str):
            raise ValueError(f"{where}: message {i} ({role}) content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    rest = out[1:] if out[0]["role"] == "system" else out
    for i, m in enumerate(rest):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(f"{where}: roles must alternate user/assistant after an optional system message; "
                             f"message {i + len(out) - len(rest)} is {m['role']!r}, expected {expected!r}")
    if len(rest) < 2:
        raise ValueError(f"{where}: a training conversation needs a user message and an assistant answer")
    return out


def read_jsonl_conversations(path) -> list[list[dict]]:
    """A JSONL file whose lines are message lists (nanochat's CustomJSON) or {"messages": [...]} objects."""
    from nanochat_hf.dataset import read_jsonl

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"conversation file {path} not found; give a JSONL file, one conversation per line")
    return [check_conversation(obj, path.name, n) for n, obj in read_jsonl(path)]


def _messages_of(conversation) -> list[dict]:
    """Accept a list of messages or nanochat's {"messages": [...]} dict."""
    if isinstance(conversation, dict) and "messages" in conversation:
        conversation = conversation["messages"]
    if not isinstance(conversation, (list, tuple)):
        raise ValueError(f"a conversation is a list of {{'role', 'content'}} messages, got "
                         f"{type(conversation).__name__}")
    for i, m in enumerate(conversation):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
    return list(conversation)


def _apply(tokenizer, messages, **kwargs):
    import jinja2

    try:
        return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    except jinja2.exceptions.TemplateError as err:  # raise_exception() in the template
        raise ValueError(f"bad conversation: {err}") from None


def render_conversation(tokenizer, messages, max_length: int | None = None) -> tuple[list[int], list[int]]:
    """(ids, mask) of a conversation as nanochat renders it; mask 1 = the model is trained on this token."""
    messages = _messages_of(messages)
    if not messages:
        raise ValueError("bad conversation: the conversation is empty; give at least one user message")
    out = _apply(tokenizer, messages, return_assistant_tokens_mask=True)
    return list(out["input_ids"])[:max_length], list(out["assistant_masks"])[:max_length]


def render_for_completion(tokenizer, messages) -> list[int]:
    """Prompt ids for generation: a trailing assistant message is dropped, `<|assistant_start|>` appended."""
    messages = _messages_of(messages)
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages:
        raise ValueError("bad conversation: nothing left to prompt with; give at least one user message")
    return list(_apply(tokenizer, messages, add_generation_prompt=True)["input_ids"])


def tokenize_conversations(dataset, tokenizer, max_length: int, name: str = "train", num_proc: int | None = None):
    """Add `input_ids` and `assistant_masks` (the chat template's generation spans), cropped to `max_length`.

    Done here rather than inside TRL so a bad row fails naming its dataset and row, and so crops
    are counted: nanochat crops a long conversation to its first `max_length` tokens, and so do we.
    Returns (dataset, stats) with stats = {"rows", "tokens", "truncated_rows", "dropped_rows"}.
    """
    def render(row, idx):
        try:
            ids, mask = render_conversation(tokenizer, row["messages"])
        except ValueError as err:
            raise ValueError(f"{name} dataset row {idx}: {err}") from None
        return {"input_ids": ids[:max_length], "assistant_masks": mask[:max_length], "full_length": len(ids)}

    out = dataset.map(render, with_indices=True, num_proc=num_proc, desc=f"tokenizing {name}")
    lengths = out["full_length"]
    kept = [min(n, max_length) for n in lengths]
    stats = {"rows": len(out), "tokens": int(sum(kept)), "truncated_rows": int(sum(n > max_length for n in lengths))}
    # A row whose crop left no supervised token teaches nothing (TRL would refuse it): drop it and count it.
    out = out.filter(lambda m: 1 in m, input_columns="assistant_masks", desc=f"dropping unsupervised {name} rows")
    stats["dropped_rows"] = stats["rows"] - len(out)
    return out.remove_columns("full_length"), stats
