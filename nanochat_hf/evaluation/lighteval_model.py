"""A lighteval model backend that generates with nanochat_hf's Engine: the calculator runs inside generation.

    NANOCHAT_HF_CHAT_DATA=path/to/chat_data lighteval custom runs/tiny/sft nanochat_hf/evaluation/lighteval_model.py \
        "chat_gsm8k|0,chat_humaneval|0,chat_spellingbee|0,chat_arc_easy|0" \
        --custom-tasks nanochat_hf/evaluation/lighteval_tasks.py

Why a backend of our own: GSM8K and SpellingBee replies call the calculator and nanochat forces the result into the
sequence before the model goes on; lighteval's stock backends would score a different (tool-less) model.
`greedy_until` decodes with the tool from the exact prompt tokens our tasks put in `doc.specific["prompt_ids"]` (a
prompt longer than the context gets an empty reply, scored wrong, as in `nanochat-hf eval`); `loglikelihood`
tokenizes as lighteval's transformers backend does, so letter tasks and CORE match `lighteval accelerate`.
lighteval loads the first `LightevalModel` subclass it finds in this file, so import no other one here.
"""

from __future__ import annotations

import logging

import torch
from lighteval.models.abstract_model import LightevalModel
from lighteval.models.model_output import ModelResponse
from lighteval.tasks.requests import Doc
from tqdm.auto import tqdm

from nanochat_hf.engine import load_engine
from nanochat_hf.evaluation.chat_tasks import MAX_NEW_TOKENS

logger = logging.getLogger(__name__)


class _NoSampleCache:
    """No disk cache of results for lighteval's Pipeline: it keys them by the model's name, not its weights, so a
    checkpoint retrained into the same folder would be answered from the old run's samples."""

    def _init_registry(self, registry):
        pass


class NanochatEngineModel(LightevalModel):
    """lighteval's model interface over nanochat_hf's Engine (see the module docstring)."""

    def __init__(self, config):
        self.config, self._cache, self.engine = config, _NoSampleCache(), load_engine(config.model_name)
        self.model, self._tokenizer, self.device = self.engine.model, self.engine.tokenizer, self.engine.device

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def add_special_tokens(self) -> bool:
        return True  # like lighteval's transformers backend: the tokenizer adds BOS to contexts

    @property
    def max_length(self) -> int:
        return self.engine.max_context

    # ------------------------------------------------------------------ generation

    def greedy_until(self, docs: list[Doc]) -> list[ModelResponse]:
        out, too_long = [], 0
        for doc in tqdm(docs, desc="greedy with the calculator", disable=self.disable_tqdm):
            ids = (doc.specific or {}).get("prompt_ids")  # our tasks' exact tokens, else the tokenized query
            prompt = list(ids) if ids else self.tok_encode(doc.query)
            if len(prompt) >= self.max_length:
                too_long += 1
                out.append(ModelResponse(input=doc.query, input_tokens=prompt, text=[""], output_tokens=[[]]))
                continue
            seqs, _ = self.engine.generate_batch(prompt, max_tokens=doc.generation_size or MAX_NEW_TOKENS,
                                                 temperature=0.0)
            tokens = seqs[0][len(prompt):]
            text = self.tokenizer.decode(tokens, skip_special_tokens=False)
            # a task's own stop strings cut the reply, as lighteval's backends do
            for stop in doc.stop_sequences or []:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out.append(ModelResponse(input=doc.query, input_tokens=prompt, text=[text], output_tokens=[tokens]))
        if too_long:
            logger.warning("%d of %d prompts do not fit the model's %d-token context; scored as wrong",
                           too_long, len(docs), self.max_length)
        return out

    # ------------------------------------------------------------------ log-likelihoods

    @torch.inference_mode()
    def _continuation_logprobs(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Sum of log p(continuation | context) and whether greedy decoding would produce it."""
        ids = (context + continuation)[-self.max_length - 1:]
        n = len(continuation)
        logits = self.model(input_ids=torch.tensor([ids[:-1]], device=self.device)).logits[0, -n:].float()
        logprobs = logits.log_softmax(-1)
        target = torch.tensor(ids[-n:], device=self.device)
        return float(logprobs.gather(-1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all())

    def loglikelihood(self, docs: list[Doc]) -> list[ModelResponse]:
        out = []
        for doc in tqdm(docs, desc="log-likelihoods", disable=self.disable_tqdm):
            contexts, continuations = self.tok_encode_pair(doc.query, doc.choices, pairwise=True)
            scored = [self._continuation_logprobs(c, k) for c, k in zip(contexts, continuations)]
            out.append(ModelResponse(input=doc.query, input_tokens=contexts[0], output_tokens=continuations,
                                     logprobs=[lp for lp, _ in scored], argmax_logits_eq_gold=[g for _, g in scored]))
        return out

    def loglikelihood_rolling(self, docs: list[Doc]) -> list[ModelResponse]:
        out = []
        for doc in tqdm(docs, desc="rolling log-likelihoods", disable=self.disable_tqdm):
            ids = self.tok_encode(doc.query)
            lp, greedy = self._continuation_logprobs(ids[:1], ids[1:])
            out.append(ModelResponse(input=doc.query, input_tokens=ids, output_tokens=[ids[1:]], logprobs=[lp],
                                     argmax_logits_eq_gold=[greedy]))
        return out
