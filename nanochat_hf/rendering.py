"""Generated token ids back to text: streamed UTF-8 pieces (`StreamDecoder`), display text with the calculator
call made visible (`ChatRenderer`), and nanochat message parts (`parse_assistant`)."""

from __future__ import annotations

from nanochat_hf.loading import STOP_TOKENS

# nanochat's message parts of a tool call: part type -> (the special token opening it, the one closing it).
TOOL_PARTS = {"python": ("<|python_start|>", "<|python_end|>"),
              "python_output": ("<|output_start|>", "<|output_end|>")}
# How a tool call reads as text, `[calculator: 12*3 = 36]`: in the terminal chat and the server's `content`.
TOOL_MARKERS = {"<|python_start|>": "[calculator: ", "<|python_end|>": "",
                "<|output_start|>": " = ", "<|output_end|>": "]"}


def _tool_ids(tokenizer) -> tuple[dict[int, str], set[int], set[int]]:
    """(opening token id -> part type, closing token ids, stop token ids) in this tokenizer."""
    vocab = tokenizer.get_vocab()
    opens = {vocab[start]: kind for kind, (start, _) in TOOL_PARTS.items()}
    return opens, {vocab[end] for _, end in TOOL_PARTS.values()}, {vocab[t] for t in STOP_TOKENS if t in vocab}


class StreamDecoder:
    """Token ids -> text pieces, holding back bytes of a character split across tokens.

    Each push decodes only the tokens since the last emitted piece plus the few before them (for context),
    not the whole sequence, so long streams cost the same per token.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = False):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start: tokens before it are emitted and no longer needed
        self.read = 0  # tokens before it are emitted as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, token: int) -> str:
        self.ids.append(token)
        done = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) <= len(done) or text.endswith("\ufffd"):  # nothing new, or a character still incomplete
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(done):]

    def flush(self) -> str:
        """Whatever is held back (at the end of a stream an incomplete character is shown as is)."""
        done = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(done):]


class ChatRenderer:
    """Generated token ids -> display text with the tool call made visible, streamed piece by piece.

    A tool part's opening token becomes its TOOL_MARKERS, a closing token the marker of the part it closes
    (a stray one closes nothing and shows nothing, so the brackets stay balanced), the stop tokens nothing.
    `kind` is the part the latest token belongs to: "text", "python" or "python_output".
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.opens, self.closes, stops = _tool_ids(tokenizer)
        self.special = set(tokenizer.all_special_ids) | set(self.opens) | self.closes | stops
        self.kind, self.decoder = "text", StreamDecoder(tokenizer)

    def push(self, token: int) -> str:
        if token not in self.special:
            return self.decoder.push(token)
        self.decoder = StreamDecoder(self.tokenizer)  # a special token ends any pending text
        if token in self.opens:
            self.kind = self.opens[token]
            return TOOL_MARKERS[TOOL_PARTS[self.kind][0]]
        if token in self.closes:
            closed, self.kind = self.kind, "text"
            return TOOL_MARKERS[TOOL_PARTS[closed][1]] if closed in TOOL_PARTS else ""
        return ""


def parse_assistant(tokenizer, tokens: list[int]) -> list[dict]:
    """Completion ids -> nanochat message parts [{"type": "text"|"python"|"python_output", "text": ...}].

    The inverse of the chat template for an assistant turn, so a conversation with tool calls can be
    stored as messages and re-rendered exactly (the stop token, if present, is dropped).
    """
    kinds, closers, stops = _tool_ids(tokenizer)
    parts, kind, buf = [], "text", []

    def flush():
        if buf or kind != "text":
            parts.append({"type": kind, "text": tokenizer.decode(buf)})
        buf.clear()

    for t in tokens:
        if t in stops:
            break
        if t in kinds:
            flush()
            kind = kinds[t]
        elif t in closers:
            flush()
            kind = "text"
        else:
            buf.append(t)
    flush()
    return parts
