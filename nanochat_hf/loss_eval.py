"""Bits per byte: the validation metric of pretraining, as nanochat defines it.

    from nanochat_hf.loss_eval import evaluate_bpb
    bpb = evaluate_bpb(model, val_loader, steps=20, token_bytes=get_token_bytes(tokenizer))

Mean cross-entropy per token depends on the tokenizer (a bigger vocabulary packs more text into
each token); bits per byte does not: sum the loss in nats over target tokens, divide by ln 2
and by the number of UTF-8 bytes those tokens decode to. Special tokens (byte length 0, e.g.
BOS) and ignored targets (< 0, e.g. -100) count neither loss nor bytes.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T) cross-entropy in nats, computed in fp32; targets < 0 (ignored) give 0."""
    valid = targets >= 0
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    loss = F.cross_entropy(logits.float().flatten(0, 1), safe.flatten(), reduction="none").view_as(targets)
    return loss * valid


@torch.no_grad()
def evaluate_bpb(model, batches, steps: int, token_bytes: torch.Tensor) -> float:
    """Bits per byte over `steps` batches of (inputs, targets), summed over all ranks."""
    device = next(model.parameters()).device
    token_bytes = token_bytes.to(device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    it = iter(batches)
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            inputs, targets = next(it)
            inputs, targets = inputs.to(device), targets.to(device)
            loss = token_losses(model(input_ids=inputs).logits, targets)
            valid = targets >= 0
            nbytes = torch.where(valid, token_bytes[torch.where(valid, targets, 0)], 0)
            total_nats += (loss * (nbytes > 0)).sum(dtype=torch.float64)
            total_bytes += nbytes.sum()
    finally:
        model.train(was_training)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total_nats)
        dist.all_reduce(total_bytes)
    nbytes = int(total_bytes.item())
    return float("inf") if nbytes == 0 else float(total_nats.item()) / (math.log(2) * nbytes)
