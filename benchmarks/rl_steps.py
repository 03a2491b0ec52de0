"""How far one RL step moves the policy, per optimizer parameter group (the tiny recipe's measurements).

    python benchmarks/rl_steps.py --model runs/tiny/sft [--questions 8] [--fracs 0.05 0.02]

One REINFORCE gradient (nanochat's objective: advantage = reward - group mean, token-mean) from
`--questions` x 8 tool-using samples at temperature 1; then one optimizer step on a copy of the model,
for the whole optimizer and for each group alone, and for comparison a step along a random direction of
the same per-element size. Printed per step: |dW| and the KL (nats/token) it causes on the model's own
greedy answers to 30 held-out problems. A step whose KL is large while a random step's is not moves the
policy along the directions it is most sensitive to: RL's noise, not its signal, sets its size.
"""

import argparse
import copy

import torch

from nanochat_hf.chat_format import render_for_completion
from nanochat_hf.engine import Engine
from nanochat_hf.loading import load_model
from nanochat_hf.optim import MuonAdamW, build_param_groups
from nanochat_hf.rewards import correctness_reward
from nanochat_hf.rl import sample_with_tools, synthetic_rows, to_prompt_dataset
from nanochat_hf.synthetic_tasks import VAL_SEED_OFFSET

LRS = dict(embedding_lr=0.2, unembedding_lr=0.004, matrix_lr=0.02, scalar_lr=0.5)  # nanochat's chat_rl


def rollouts(engine, tokenizer, rows, samples):
    """[(prompt ids, completion ids, loss mask)], advantages (reward - group mean)."""
    seqs, adv = [], []
    for i, row in enumerate(rows):
        prompt = render_for_completion(tokenizer, row["prompt"])
        ids, masks = sample_with_tools(engine, prompt, samples, 96, 1.0, 50, None, i)
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        rewards = correctness_reward(completions=texts, answer=[row["answer"]] * samples)
        mean = sum(rewards) / samples
        seqs += [(prompt, c, m) for c, m in zip(ids, masks)]
        adv += [r - mean for r in rewards]
    return seqs, adv


def policy_gradient(model, seqs, adv):
    model.train()
    tokens = sum(sum(m) for _, _, m in seqs)
    for (prompt, completion, mask), a in zip(seqs, adv):
        if a == 0:
            continue
        logits = model(torch.tensor(prompt + completion)[None]).logits[0, len(prompt) - 1:-1]
        logp = logits.log_softmax(-1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
        (-(a * logp * torch.tensor(mask, dtype=torch.float)).sum() / tokens).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return grads


@torch.no_grad()
def log_probs(model, probe):
    model.eval()
    return [model(s[None]).logits[0, :-1].log_softmax(-1) for s in probe]


def step_kl(model, grads, base, probe, frac, only=None, random=False, adamw_lr=None):
    """|dW| and KL(old || new) per token of one optimizer step (a group name prefix in `only`);
    with `adamw_lr`, one step of plain AdamW on the block matrices instead."""
    m = copy.deepcopy(model)
    params = dict(m.named_parameters())
    for n, p in params.items():
        p.grad = torch.randn_like(grads[n]) * grads[n].abs().mean() if random else grads[n].clone()
    groups = build_param_groups(m, **LRS, batch_lr_scale=frac)
    groups = [g for g in groups if only is None or g["name"].startswith(only)]
    if not groups:
        return None
    before = {n: p.detach().clone() for n, p in params.items()}
    if adamw_lr:
        torch.optim.AdamW([p for g in groups for p in g["params"]], lr=adamw_lr, weight_decay=0.0).step()
    else:
        MuonAdamW(groups).step()
    dw = sum(((p - before[n]) ** 2).sum().item() for n, p in params.items()) ** 0.5
    new = log_probs(m, probe)
    kl = sum((b.exp() * (b - a)).sum(-1).mean().item() for b, a in zip(base, new)) / len(probe)
    return dw, kl


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an SFT model folder (e.g. runs/tiny/sft)")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--fracs", type=float, nargs="+", default=[0.05, 0.02])
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model, dtype=torch.float32)
    engine = Engine(model, tokenizer)
    train = to_prompt_dataset(synthetic_rows(args.questions, seed=200_000, max_operand=999))
    held_out = to_prompt_dataset(synthetic_rows(30, seed=VAL_SEED_OFFSET, max_operand=999))
    with torch.no_grad():
        seqs, adv = rollouts(engine, tokenizer, train, 8)
        probe = []
        for i, row in enumerate(held_out):
            prompt = render_for_completion(tokenizer, row["prompt"])
            ids, _ = sample_with_tools(engine, prompt, 1, 96, 0.0, None, None, i)
            probe.append(torch.tensor(prompt + ids[0]))
    print(f"{len(seqs)} samples, {sum(a != 0 for a in adv)} with a nonzero advantage")
    grads = policy_gradient(model, seqs, adv)
    base = log_probs(model, probe)
    names = [None, "unembedding", "embedding", "value_embeds", "resid", "x0", "smear", "matrix"]
    print(f"{'init_lr_frac':>12} {'group':>12} {'|dW|':>8} {'KL/token':>9} {'random: KL/token':>17}")
    for frac in args.fracs:
        for only in names:
            out = step_kl(model, grads, base, probe, frac, only)
            if out is not None:
                _, rand_kl = step_kl(model, grads, base, probe, frac, only, random=True)
                print(f"{frac:>12} {only or 'all':>12} {out[0]:8.4f} {out[1]:9.5f} {rand_kl:17.5f}", flush=True)
    out = step_kl(model, grads, base, probe, 1.0, "matrix", adamw_lr=1e-4)
    _, rand_kl = step_kl(model, grads, base, probe, 1.0, "matrix", random=True, adamw_lr=1e-4)
    print(f"{'AdamW 1e-4':>12} {'matrix':>12} {out[0]:8.4f} {out[1]:9.5f} {rand_kl:17.5f}", flush=True)


if __name__ == "__main__":
    main()
