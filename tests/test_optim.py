"""Muon + AdamW: nanochat's groups, learning-rate scaling, schedules and the Muon update itself."""

import copy

import pytest
import torch

from nanochat_hf.optim import (
    MuonAdamW,
    TrainingSchedule,
    _orthogonalize,
    build_optimizer,
    build_param_groups,
    lr_multiplier,
    muon_momentum,
    weight_decay_multiplier,
)


class TinyLM(torch.nn.Module):
    """The shapes and names of nanochat's modern model, without the model."""

    def __init__(self, d=64, vocab=128):
        super().__init__()
        self.config = type("Cfg", (), {"hidden_size": d})()
        self.embed_tokens = torch.nn.Embedding(vocab, d)
        self.value_embeds = torch.nn.Embedding(vocab, d)
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleDict({"q": torch.nn.Linear(d, d, bias=False), "up": torch.nn.Linear(d, 4 * d, bias=False),
                                 "down": torch.nn.Linear(4 * d, d, bias=False)}) for _ in range(2))
        self.resid_lambdas = torch.nn.Parameter(torch.ones(2))
        self.x0_lambdas = torch.nn.Parameter(torch.zeros(2))
        self.smear_lambda = torch.nn.Parameter(torch.zeros(1))
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)

    def param_groups(self):
        return {"embedding": [self.embed_tokens.weight, self.value_embeds.weight],
                "unembedding": [self.lm_head.weight],
                "matrix": [p for layer in self.layers for p in layer.parameters()],
                "scalar": [self.resid_lambdas, self.x0_lambdas, self.smear_lambda]}

    def forward(self, x):
        h = self.embed_tokens(x) + self.value_embeds(x)
        for i, layer in enumerate(self.layers):
            h = self.resid_lambdas[i] * h + self.x0_lambdas[i] + layer["q"](h)
            h = h + layer["down"](torch.relu(layer["up"](h)))
        return self.lm_head(h * (1 + self.smear_lambda))


def groups_by_name(groups):
    return {g["name"]: g for g in groups}


def test_groups_follow_nanochat_recipe():
    model = TinyLM(d=3072)  # width 3072 = 4 x 768: AdamW lrs scale by (3072/768)^-0.5 = 0.5
    groups = groups_by_name(build_param_groups(model, weight_decay=0.2, batch_lr_scale=2.0))
    assert groups["embedding"]["lr"] == pytest.approx(0.3 * 0.5 * 2)
    assert groups["value_embeds"]["lr"] == pytest.approx(0.3 * 0.5 * 0.5 * 2)
    assert groups["unembedding"]["lr"] == pytest.approx(0.008 * 0.5 * 2)
    assert groups["x0_scalars"]["lr"] == pytest.approx(0.5 * 2) and groups["x0_scalars"]["betas"] == (0.96, 0.95)
    assert groups["resid_scalars"]["lr"] == pytest.approx(0.5 * 0.01 * 2)
    muon = [g for g in groups.values() if g["kind"] == "muon"]
    assert {g["name"] for g in muon} == {"matrix_3072x3072", "matrix_12288x3072", "matrix_3072x12288"}
    assert all(g["lr"] == pytest.approx(0.02 * 2) and g["weight_decay"] == 0.2 for g in muon)
    # Every trainable parameter is in exactly one group.
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def test_rl_init_lr_frac_scales_every_group_smear_included():
    """nanochat's chat_rl multiplies every group's lr by init_lr_frac; the smear/backout scalars, whose
    lr is fixed (0.2) rather than derived from scalar_lr, wrecked a tiny RL run in 3 steps when left out."""
    from nanochat_hf.rl import RLArguments, build_nanochat_optimizer

    model = TinyLM()
    full = groups_by_name(build_param_groups(model, embedding_lr=0.2, unembedding_lr=0.004,
                                             matrix_lr=0.02, scalar_lr=0.5))
    args = RLArguments(init_lr_frac=0.05)
    optimizer = build_nanochat_optimizer(model, args)
    scaled = groups_by_name(optimizer.param_groups)
    assert set(scaled) == set(full) and "smear_scalars" in scaled
    for name, group in scaled.items():
        assert group["lr"] == pytest.approx(full[name]["lr"] * 0.05), name


def test_groups_fallback_without_param_groups_and_errors():
    from transformers import NanoChatConfig, NanoChatForCausalLM

    cfg = NanoChatConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=16, max_position_embeddings=16)
    groups = groups_by_name(build_param_groups(NanoChatForCausalLM(cfg)))
    assert set(groups) == {"embedding", "unembedding", "matrix_32x32", "matrix_64x32", "matrix_32x64"}
    with pytest.raises(ValueError, match="2-D weight matrices only"):
        MuonAdamW([dict(kind="muon", params=[torch.nn.Parameter(torch.ones(3))], lr=0.1)])
    with pytest.raises(ValueError, match="kind must be"):
        MuonAdamW([dict(kind="sgd", params=[torch.nn.Parameter(torch.ones(3))], lr=0.1)])


def test_schedules():
    n = 1000
    assert lr_multiplier(0, n) == pytest.approx(1 / 40)  # warmup 40 steps
    assert lr_multiplier(39, n) == 1.0 and lr_multiplier(350, n) == 1.0
    assert lr_multiplier(351, n) < 1.0  # warmdown = last 65% of 1000 steps, from step 350
    assert lr_multiplier(n, n) == pytest.approx(0.05)
    assert lr_multiplier(675, n) == pytest.approx(0.5 + 0.5 * 0.05)
    assert muon_momentum(0, 10_000) == pytest.approx(0.85)
    assert muon_momentum(200, 10_000) == pytest.approx(0.91)
    assert muon_momentum(400, 10_000) == pytest.approx(0.97)
    assert muon_momentum(10_000, 10_000) == pytest.approx(0.90)
    assert weight_decay_multiplier(0, n) == 1.0 and weight_decay_multiplier(n, n) == pytest.approx(0.0)
    opt = build_optimizer(TinyLM(), weight_decay=0.28)
    sched = TrainingSchedule(opt, n)
    v = sched.apply(500)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(g["initial_lr"] * v["lrm"])
        if g["kind"] == "muon":
            assert g["momentum"] == v["muon_momentum"]
            assert g["weight_decay"] == pytest.approx(0.28 * weight_decay_multiplier(500, n))
    assert sched.state_dict()["step_count"] == 501


def test_polar_express_orthogonalizes():
    g = torch.randn(3, 64, 32) @ torch.diag(torch.logspace(0, 2, 32))  # badly conditioned
    x = _orthogonalize(g, ns_steps=5)
    s = torch.linalg.svdvals(x)
    assert torch.allclose(x.norm(dim=(-2, -1)), torch.full((3,), 32**0.5), rtol=1e-4)  # Muon+ norm
    assert s.min() > 0.5 and s.max() < 1.5  # all directions move at a similar rate
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 50


def test_training_reduces_loss_and_state_round_trips():
    torch.manual_seed(0)
    model = TinyLM()
    opt = build_optimizer(model, weight_decay=0.1)
    x = torch.randint(0, 128, (8, 16))
    y = torch.roll(x, 1, dims=1)

    def step(m, o):
        loss = torch.nn.functional.cross_entropy(m(x).flatten(0, 1), y.flatten())
        loss.backward()
        o.step()
        o.zero_grad(set_to_none=True)
        return loss.item()

    losses = [step(model, opt) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    # A copy restored from the state dict takes exactly the same next step.
    clone = copy.deepcopy(model)
    opt2 = build_optimizer(clone, weight_decay=0.1)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    step(model, opt)
    step(clone, opt2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), clone.parameters()))


def test_cautious_weight_decay_only_where_update_agrees():
    p = torch.nn.Parameter(torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
    opt = MuonAdamW([dict(kind="muon", params=[p], lr=0.0, momentum=0.0, ns_steps=5, beta2=0.9, weight_decay=0.5)])
    opt.param_groups[0]["lr"] = 0.1
    p.grad = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # update sign agrees with column 0 only
    before = p.detach().clone()
    opt.step()
    # Column 1 (weights -1, update +) is not decayed: it moves only by the orthogonalised update.
    moved = (before - p.detach())
    # Both columns get the same update u; column 0 (weight +1) also decays by lr * wd * 1.
    assert torch.allclose(moved[:, 0] - moved[:, 1], torch.full((2,), 0.1 * 0.5))
    assert (moved[:, 1] > 0).all()


FSDP2_SCRIPT = '''
import sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
sys.path.insert(0, sys.argv[1])
from test_optim import TinyLM
from nanochat_hf.optim import build_optimizer

def run(shard):
    torch.manual_seed(0)
    m = TinyLM(d=64, vocab=128)
    if shard:  # FSDP2: every parameter becomes a DTensor sharded on dim 0 across the 2 ranks
        for layer in m.layers:
            for mod in layer.values():
                fully_shard(mod)
        fully_shard(m)
    opt = build_optimizer(m, weight_decay=0.1)
    x = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(4):
        loss = torch.nn.functional.cross_entropy(m(x).flatten(0, 1), torch.roll(x, 1, 1).flatten())
        loss.backward(); opt.step(); opt.zero_grad()
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach() for k, v in m.state_dict().items()}

dist.init_process_group("gloo")
sharded, plain = run(True), run(False)
diff = max((sharded[k] - plain[k]).abs().max().item() for k in plain)
if dist.get_rank() == 0:
    print("MAXDIFF", diff)
dist.destroy_process_group()
'''


@pytest.mark.multiprocess
def test_fsdp2_sharded_parameters_match_unsharded(tmp_path):
    """Under FSDP2 Muon gathers each matrix, orthogonalises it and keeps its shard: same result."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "fsdp2_check.py"
    script.write_text(FSDP2_SCRIPT)
    tests_dir = Path(__file__).resolve().parent
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(tests_dir.parent))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29541", str(script), str(tests_dir)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    diff = float(res.stdout.split("MAXDIFF")[1].split()[0])
    assert diff < 1e-5
