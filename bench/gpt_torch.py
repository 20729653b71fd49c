"""PyTorch CPU fp32 reference for `tessera bench gpt`: the identical GPT, optimizer and batch.

Architecture (as tessera-model's Gpt): byte vocab 256, learned token and position embeddings,
pre-norm blocks with separate q/k/v/out projections (with bias), causal softmax attention,
GELU (tanh) MLP of width 4d, final layer norm, untied output head without bias. AdamW
(betas 0.9/0.95, wd 0.1 on matrices) with global grad-norm clipping at 1.0.

Usage: python bench/gpt_torch.py THREADS [STEPS] [PRESET] [BATCH] [ATTN]
ATTN is "manual" (matmul + masked softmax + matmul, as tessera) or "sdpa"
(torch.nn.functional.scaled_dot_product_attention).
"""
import math
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
preset = sys.argv[3] if len(sys.argv) > 3 else "small"
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 16
attn_kind = sys.argv[5] if len(sys.argv) > 5 else "manual"
torch.set_num_threads(threads)
torch.manual_seed(1)

PRESETS = {"tiny": (48, 3, 4, 64), "small": (256, 4, 4, 128), "base": (384, 6, 6, 256)}
d, layers, heads, ctx = PRESETS[preset]


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))
        self.register_buffer("mask", torch.tril(torch.ones(ctx, ctx, dtype=torch.bool)))

    def forward(self, x):
        b, t, _ = x.shape
        split = lambda y: y.view(b, t, heads, d // heads).transpose(1, 2)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        if attn_kind == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // heads))
            s = s.masked_fill(~self.mask[:t, :t], float("-inf"))
            o = F.softmax(s, dim=-1) @ v
        return self.out_proj(o.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(d), Attn(), nn.LayerNorm(d)
        self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(256, d), nn.Embedding(ctx, d)
        self.h = nn.ModuleList(Block() for _ in range(layers))
        self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, 256, bias=False)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for blk in self.h:
            x = blk(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1))


model = Gpt()
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
    lr=3e-3, betas=(0.9, 0.95), eps=1e-8,
)
data = torch.randint(0, 256, (steps + 2, batch, ctx + 1))


def step(i):
    x, y = data[i, :, :-1], data[i, :, 1:]
    opt.zero_grad(set_to_none=True)
    loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


for i in range(2):
    step(i)
t0 = time.perf_counter()
for i in range(2, steps + 2):
    step(i)
secs = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print("impl\tthreads\tpreset\tbatch\tcontext\ttokens_per_s\tpeak_rss_mib\tpath")
print(f"torch-{attn_kind}\t{threads}\t{preset}\t{batch}\t{ctx}\t{steps * batch * ctx / secs:.0f}\t{rss:.0f}\ttorch{torch.__version__}")
