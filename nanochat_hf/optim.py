"""Muon + AdamW in one optimizer, with nanochat's parameter groups and schedules.

    from nanochat_hf.optim import build_optimizer, TrainingSchedule
    optimizer = build_optimizer(model, embedding_lr=0.3, unembedding_lr=0.008, matrix_lr=0.02,
                                scalar_lr=0.5, weight_decay=0.28, batch_lr_scale=1.0)

Muon updates the 2-D weight matrices inside the transformer blocks; AdamW the embeddings, the head and
the scalars. Not `torch.optim.Muon` (torch 2.13: one fixed Newton-Schulz polynomial, plain weight decay, no
second moment): nanochat's Muon, which sets its speedrun numbers, uses Polar Express, MuonEq row
equilibration, Muon+ renormalisation, a NorMuon factored second moment and cautious weight decay:
  Polar Express  https://arxiv.org/abs/2505.16932    NorMuon  https://arxiv.org/abs/2510.05491
  MuonEq         https://arxiv.org/abs/2603.28254    Muon+    https://arxiv.org/abs/2602.21545

Under DDP every rank computes the same update from the averaged gradients (nanochat shards the optimizer
itself: it does not use DDP). Under FSDP2 (DTensors sharded on dim 0) AdamW works shard by shard; Muon
gathers each matrix's momentum, orthogonalises the whole matrix and applies its own shard of the update.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from nanochat_hf.extras import available

try:  # DTensor is how FSDP2 hands us sharded parameters.
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - very old torch
    DTensor, distribute_tensor = (), None

# Polar Express coefficients for 5 iterations (safety factor 2e-2, cushion 2), from the paper.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

# nanochat's reference point for the muP-style rescaling of learning rates.
REFERENCE_WIDTH = 768  # AdamW lrs are tuned at d_model 768 and scale as (d/768)^-0.5
REFERENCE_BATCH = 2**19  # tokens per step at d12; lrs scale as sqrt(B / 2^19)


# ----------------------------------------------------------------------------- the updates


def _orthogonalize(g: Tensor, ns_steps: int) -> Tensor:
    """(K, m, n) stack of momenta -> nearest semi-orthogonal matrices (MuonEq + Polar Express + Muon+)."""
    # bf16 matmuls on GPU are fast and stable enough here; fp32 elsewhere (CPU bf16 is slow).
    x = g.bfloat16() if g.is_cuda else g.float()
    # MuonEq: equalise row norms so the spectrum entering the iteration is better conditioned.
    target = x.float().norm(dim=(-2, -1), keepdim=True) / (x.size(-2) ** 0.5)
    x = x * (target / x.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)).to(x.dtype)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-6)  # spectral norm <= 1
    tall = x.size(-2) > x.size(-1)  # work on the smaller Gram matrix
    for a, b, c in POLAR_EXPRESS_COEFFS[:ns_steps]:
        if tall:
            gram = x.mT @ x
            x = a * x + x @ (b * gram + c * (gram @ gram))
        else:
            gram = x @ x.mT
            x = a * x + (b * gram + c * (gram @ gram)) @ x
    out = x.float()
    # Muon+: snap the Frobenius norm to that of an exact semi-orthogonal matrix, sqrt(min(m, n)).
    target_norm = min(out.size(-2), out.size(-1)) ** 0.5
    return out * (target_norm / out.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-6))


def _normuon_scale(u: Tensor, second_moment: Tensor, beta2: float) -> Tensor:
    """NorMuon: per-row (or per-column) adaptive step that keeps the update's overall norm."""
    red_dim = -1 if u.size(-2) >= u.size(-1) else -2  # the factored moment lives on the long side
    v_mean = u.square().mean(dim=red_dim, keepdim=True)
    red_size = u.size(red_dim)
    v_norm = (v_mean.sum(dim=(-2, -1), keepdim=True) * red_size).sqrt()
    second_moment.lerp_(v_mean.to(second_moment.dtype), 1 - beta2)
    step = second_moment.float().clamp_min(1e-10).rsqrt()
    v_norm_new = ((v_mean * red_size) * step.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    return u * (step * (v_norm / v_norm_new.clamp_min(1e-10)))


def _muon_direction(stacked: Tensor, second_moment: Tensor, ns_steps: int, beta2: float) -> Tensor:
    return _normuon_scale(_orthogonalize(stacked, ns_steps), second_moment, beta2)


_compiled_direction = None


def direction_fn(is_cuda: bool):
    """The Muon direction to run: one fused torch.compile graph on GPU (as nanochat; it needs triton, else eager,
    said once), eager elsewhere or with NANOCHAT_HF_COMPILE_OPTIM=0 (debugging, a misbehaving compiler)."""
    global _compiled_direction
    if not is_cuda or os.environ.get("NANOCHAT_HF_COMPILE_OPTIM", "1") != "1":
        return _muon_direction
    if _compiled_direction is None:
        if available("triton"):
            _compiled_direction = torch.compile(_muon_direction, dynamic=False, fullgraph=True)
        else:
            print("Muon: triton is not installed (it comes with torch's CUDA wheels), so its step runs eager "
                  "(slower); reinstall torch for CUDA, or set NANOCHAT_HF_COMPILE_OPTIM=0 to silence this")
            _compiled_direction = _muon_direction
    return _compiled_direction


def muon_direction(stacked: Tensor, second_moment: Tensor, ns_steps: int, beta2: float) -> Tensor:
    """The Muon update direction of a (K, m, n) stack of momenta (see `direction_fn` for how it runs)."""
    return direction_fn(stacked.is_cuda)(stacked, second_moment, ns_steps, beta2)


def _local(t):
    return t.to_local() if isinstance(t, DTensor) else t


def _full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


# ----------------------------------------------------------------------------- the optimizer


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer, two kinds of parameter groups (each also keeps `initial_lr`, which the schedule multiplies).

    AdamW groups: `kind="adamw"`, `lr`, `betas`, `eps`, `weight_decay` (decoupled).
    Muon groups:  `kind="muon"`, `lr`, `momentum` (Nesterov), `ns_steps`, `beta2` (NorMuon),
                  `weight_decay` (cautious: only where update and weight agree in sign).
    """

    def __init__(self, param_groups: list[dict]):
        for group in param_groups:
            if group.get("kind") not in ("adamw", "muon"):
                raise ValueError(f"param group kind must be 'adamw' or 'muon', got {group.get('kind')!r}")
            if group["kind"] == "muon" and any(p.ndim != 2 for p in group["params"]):
                raise ValueError("Muon groups take 2-D weight matrices only; put 0/1-D parameters in an AdamW group")
            group.setdefault("initial_lr", group["lr"])
        super().__init__(param_groups, defaults={})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (self._adamw if group["kind"] == "adamw" else self._muon)(group)
        return loss

    def _adamw(self, group: dict) -> None:
        beta1, beta2 = group["betas"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(p, dtype=torch.float32),
                             exp_avg_sq=torch.zeros_like(p, dtype=torch.float32))
            state["step"] += 1
            # Local shards: AdamW is elementwise, so FSDP2 shards update independently.
            p_, g = _local(p), _local(p.grad).float()
            m, v = _local(state["exp_avg"]), _local(state["exp_avg_sq"])
            m.lerp_(g, 1 - beta1)
            v.lerp_(g.square(), 1 - beta2)
            bias1, bias2 = 1 - beta1 ** state["step"], 1 - beta2 ** state["step"]
            p32 = p_.float()
            p32.mul_(1 - lr * wd)
            p32.addcdiv_(m, (v / bias2).sqrt_().add_(eps), value=-lr / bias1)
            if p32 is not p_:
                p_.copy_(p32)

    def _muon(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        mom, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
        # Nesterov momentum, per parameter (elementwise, so shards are fine under FSDP2).
        nesterov = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
                rows, cols = p.shape
                shape = (rows, 1) if rows >= cols else (1, cols)
                state["second_momentum_buffer"] = torch.zeros(shape, dtype=torch.float32, device=_local(p).device)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad.to(buf.dtype), 1 - mom)
            nesterov.append(_full(p.grad.to(buf.dtype).lerp_(buf, mom)))
        # Orthogonalise all same-shaped matrices of the group in one batched call.
        by_shape: dict[tuple, list[int]] = {}
        for i, g in enumerate(nesterov):
            by_shape.setdefault(tuple(g.shape), []).append(i)
        for shape, idx in by_shape.items():
            stacked = torch.stack([nesterov[i] for i in idx])
            second = torch.stack([self.state[params[i]]["second_momentum_buffer"] for i in idx])
            update = muon_direction(stacked, second, group["ns_steps"], group["beta2"])
            # Wide-vs-tall lr correction, as nanochat: max(1, rows/cols)^0.5.
            step_lr = lr * max(1.0, shape[0] / shape[1]) ** 0.5
            for j, i in enumerate(idx):
                p = params[i]
                self.state[p]["second_momentum_buffer"].copy_(second[j])
                u = update[j].to(p.dtype)
                if isinstance(p, DTensor):  # keep only this rank's shard of the update (no communication)
                    u = distribute_tensor(u, p.device_mesh, p.placements, src_data_rank=None)
                # Cautious weight decay: decay only coordinates where the update agrees with the weight.
                mask = (u * p) >= 0
                p.sub_(step_lr * u + (step_lr * wd) * p * mask)


# ----------------------------------------------------------------------------- parameter groups


def _named_groups(model: torch.nn.Module) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """The model's own `param_groups()` (by contract), or a grouping by names and shapes."""
    names = {id(p): n for n, p in model.named_parameters()}
    if hasattr(model, "param_groups"):
        groups = model.param_groups()
        return {k: [(names.get(id(p), ""), p) for p in v if p.requires_grad] for k, v in groups.items()}
    # Fallback (e.g. transformers' native NanoChat): 2-D weights in the blocks -> Muon.
    out = {"embedding": [], "unembedding": [], "matrix": [], "scalar": []}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "lm_head" in n:
            out["unembedding"].append((n, p))
        elif "embed" in n or "wte" in n:
            out["embedding"].append((n, p))
        elif p.ndim == 2 and (".layers." in n or ".h." in n):
            out["matrix"].append((n, p))
        else:
            out["scalar"].append((n, p))
    return out


def build_param_groups(model: torch.nn.Module, embedding_lr: float = 0.3, unembedding_lr: float = 0.008,
                       matrix_lr: float = 0.02, scalar_lr: float = 0.5, weight_decay: float = 0.0,
                       batch_lr_scale: float = 1.0, hidden_size: int | None = None) -> list[dict]:
    """nanochat's groups: per-group lrs, (d/768)^-0.5 for embedding/head, batch scaling for all."""
    named = _named_groups(model)
    seen = [p for v in named.values() for _, p in v]
    trainable = [p for p in model.parameters() if p.requires_grad]
    if len(seen) != len(trainable) or len({id(p) for p in seen}) != len(trainable):
        raise ValueError("model.param_groups() must put every trainable parameter in exactly one group")
    d = hidden_size or model.config.hidden_size
    width_scale = (d / REFERENCE_WIDTH) ** -0.5
    s = batch_lr_scale
    adam = dict(kind="adamw", eps=1e-10)
    groups: list[dict] = []

    def add(params, **kw):
        if params:
            groups.append(dict(params=params, **kw))

    add([p for _, p in named.get("unembedding", [])],
        lr=unembedding_lr * width_scale * s, betas=(0.8, 0.96), weight_decay=0.01, name="unembedding", **adam)
    emb = named.get("embedding", [])
    value_embeds = [p for n, p in emb if "value" in n]  # modern arch: gated value embeddings
    add([p for n, p in emb if "value" not in n],
        lr=embedding_lr * width_scale * s, betas=(0.8, 0.995), weight_decay=0.001, name="embedding", **adam)
    add(value_embeds,
        lr=embedding_lr * width_scale * s * 0.5, betas=(0.8, 0.995), weight_decay=0.01, name="value_embeds", **adam)
    # Scalars: residual lambdas move slowly, x0 lambdas get a higher beta1, smear/backout a fixed lr.
    scal = named.get("scalar", [])
    resid = [p for n, p in scal if "resid" in n]
    x0 = [p for n, p in scal if "x0" in n]
    smear = [p for n, p in scal if "smear" in n or "backout" in n]
    other = [p for n, p in scal if not any(k in n for k in ("resid", "x0", "smear", "backout"))]
    add(resid, lr=scalar_lr * 0.01 * s, betas=(0.8, 0.95), weight_decay=0.05, name="resid_scalars", **adam)
    add(x0, lr=scalar_lr * s, betas=(0.96, 0.95), weight_decay=0.0, name="x0_scalars", **adam)
    add(smear, lr=0.2 * s, betas=(0.8, 0.95), weight_decay=0.0, name="smear_scalars", **adam)
    add(other, lr=scalar_lr * s, betas=(0.8, 0.95), weight_decay=0.0, name="scalars", **adam)
    # Muon: one group per matrix shape (stacked into a single batched orthogonalisation).
    matrices = [p for _, p in named.get("matrix", [])]
    for shape in sorted({tuple(p.shape) for p in matrices}):
        add([p for p in matrices if tuple(p.shape) == shape], kind="muon", lr=matrix_lr * s,
            momentum=0.95, ns_steps=5, beta2=0.9, weight_decay=weight_decay, name=f"matrix_{shape[0]}x{shape[1]}")
    for g in groups:
        g["initial_lr"] = g["lr"]
        g["initial_weight_decay"] = g["weight_decay"]
    return groups


def build_optimizer(model: torch.nn.Module, **kwargs) -> MuonAdamW:
    return MuonAdamW(build_param_groups(model, **kwargs))


# ----------------------------------------------------------------------------- schedules


def batch_lr_scale(tokens_per_step: int) -> float:
    """The factor on every lr for a batch of `tokens_per_step` tokens: sqrt(B / 2^19)."""
    return (tokens_per_step / REFERENCE_BATCH) ** 0.5


def lr_multiplier(step: int, num_iterations: int, warmup_steps: int = 40,
                  warmdown_ratio: float = 0.65, final_lr_frac: float = 0.05) -> float:
    """Linear warmup, constant, then linear warmdown over the last `warmdown_ratio` to `final_lr_frac`
    (pretraining's defaults; mid-training and SFT warm down over their last 20% / 50% to 0)."""
    warmdown = round(warmdown_ratio * num_iterations)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step <= num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - step) / warmdown
    return progress + (1 - progress) * final_lr_frac


def muon_momentum(step: int, num_iterations: int, warmdown_ratio: float = 0.65,
                  warmup_steps: int = 400, start: float = 0.85, peak: float = 0.97, end: float = 0.90) -> float:
    """0.85 -> 0.97 over the first 400 steps, held, then 0.97 -> 0.90 during the lr warmdown (pretraining's
    defaults; mid-training and SFT ramp 0.85 -> 0.95 over 300 steps, with no warmdown)."""
    warmdown = round(warmdown_ratio * num_iterations)
    warmdown_start = num_iterations - warmdown
    if step < warmup_steps:
        frac = step / warmup_steps
        return (1 - frac) * start + frac * peak
    if step >= warmdown_start and warmdown > 0:
        progress = (step - warmdown_start) / warmdown
        return peak * (1 - progress) + end * progress
    return peak


def weight_decay_multiplier(step: int, num_iterations: int) -> float:
    """Muon's weight decay follows a cosine from its full value to zero over the run."""
    return 0.5 * (1 + math.cos(math.pi * step / max(1, num_iterations)))


class TrainingSchedule:
    """Sets lr, Muon momentum and Muon weight decay on every group for a given step; `state_dict` lets
    `accelerator.register_for_checkpointing` save it (a torch LRScheduler only knows about learning rates)."""

    def __init__(self, optimizer, num_iterations: int, warmup_steps: int = 40, warmdown_ratio: float = 0.65,
                 final_lr_frac: float = 0.05, momentum_warmup_steps: int = 400):
        self.optimizer, self.num_iterations, self.step_count = optimizer, num_iterations, 0
        self.warmup_steps, self.warmdown_ratio, self.final_lr_frac = warmup_steps, warmdown_ratio, final_lr_frac
        self.momentum_warmup_steps = momentum_warmup_steps

    def values(self, step: int) -> dict[str, float]:
        n = self.num_iterations
        return {"lrm": lr_multiplier(step, n, self.warmup_steps, self.warmdown_ratio, self.final_lr_frac),
                "muon_momentum": muon_momentum(step, n, self.warmdown_ratio, self.momentum_warmup_steps),
                "muon_wd_multiplier": weight_decay_multiplier(step, n)}

    def apply(self, step: int) -> dict[str, float]:
        """Write step `step`'s values into the optimizer's groups (call before optimizer.step())."""
        v = self.values(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * v["lrm"]
            if group["kind"] == "muon":
                group["momentum"] = v["muon_momentum"]
                group["weight_decay"] = group["initial_weight_decay"] * v["muon_wd_multiplier"]
        self.step_count = step + 1
        return v

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "num_iterations": self.num_iterations}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
