"""A small PyTorch implementation of the Huginn recurrent-depth architecture (SPEC.md §1).

Written from SPEC.md and from reading the official modeling file
(seal-rg/recurrent-pretraining, recpre/raven_modeling_minimal.py); no code is taken from it.
Parameter names and the on-disk layout are those of the Hugging Face Huginn checkpoint, so
`save_hf` writes a directory that `raven convert` (and the official code) read unchanged.

Main pieces:
- `HuginnConfig`: the hyperparameters, with `to_hf_json()` giving Huginn's config.json keys.
- `Huginn`: the model. `forward(ids, num_steps, ...)` is the training / one-pass forward;
  `prefill` + `step_last` implement KV-cached decoding of one more token with an exit policy.
- `save_hf` / `load_hf`: bf16 sharded safetensors with model.safetensors.index.json.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class HuginnConfig:
    n_embd: int = 128
    n_heads: int = 4
    intermediate_size: int = 384
    vocab_size: int = 320
    n_layers_in_prelude: int = 1
    n_layers_in_recurrent_block: int = 2
    n_layers_in_coda: int = 1
    mean_recurrence: int = 16
    mean_backprop_depth: int = 4
    block_size: int = 256
    rope_base: float = 50000.0
    norm_eps: float = 1e-6
    qk_bias: bool = True
    tie_embeddings: bool = True
    bos_token_id: int = 0
    eos_token_id: int = 0
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_heads

    @property
    def effective_expected_depth(self) -> int:
        return (
            self.n_layers_in_prelude
            + self.n_layers_in_coda
            + self.n_layers_in_recurrent_block * self.mean_recurrence
        )

    @property
    def init_std(self) -> float:
        """The paper's base standard deviation sqrt(2 / (5 h))."""
        return math.sqrt(2.0 / (5.0 * self.n_embd))

    @property
    def emb_scale(self) -> float:
        return math.sqrt(self.n_embd)

    def to_hf_json(self) -> dict:
        """config.json with exactly the keys of the published Huginn checkpoint."""
        std = self.init_std
        out_proj = std / math.sqrt(2 * self.effective_expected_depth)
        n_layers = self.n_layers_in_prelude + self.n_layers_in_recurrent_block + self.n_layers_in_coda
        return {
            "activation_checkpoint_impl": "per-iteration",
            "architecture_class_name": "RecurrentGPT",
            "architectures": ["RavenForCausalLM"],
            "auto_map": {
                "AutoConfig": "raven_config_minimal.RavenConfig",
                "AutoModelForCausalLM": "raven_modeling_minimal.RavenForCausalLM",
            },
            "bias": False,
            "block_class_name": "SandwichBlock",
            "block_size": self.block_size,
            "bos_token_id": self.bos_token_id,
            "effective_expected_depth": self.effective_expected_depth,
            "eos_token_id": self.eos_token_id,
            "head_dim": self.head_dim,
            "init_orthogonal": False,
            "init_strategy": "takase",
            "init_values": {
                "embed_scale": self.emb_scale,
                "embedding": std,
                "out_proj": out_proj,
                "std": std,
            },
            "injection_type": "linear",
            "intermediate_size": self.intermediate_size,
            "mean_backprop_depth": self.mean_backprop_depth,
            "mean_recurrence": self.mean_recurrence,
            "mlp_class_name": "GatedMLP",
            "model_type": "huginn_raven",
            "n_embd": self.n_embd,
            "n_heads": self.n_heads,
            "n_layers": n_layers,
            "n_layers_in_coda": self.n_layers_in_coda,
            "n_layers_in_prelude": self.n_layers_in_prelude,
            "n_layers_in_recurrent_block": self.n_layers_in_recurrent_block,
            "nonlin_name": "SiLU",
            "norm_class_name": "RMSNorm_llama",
            "norm_eps": self.norm_eps,
            "num_key_value_heads": self.n_heads,
            "pad_token_id": self.pad_token_id,
            "padded_vocab_size": self.vocab_size,
            "padding_multiple": self.vocab_size,
            "qk_bias": self.qk_bias,
            "rope_base": self.rope_base,
            "sampling_scheme": "poisson-lognormal-filling",
            "state_init": "like-init",
            "test_time_noise": 0,
            "test_time_noise_type": "fixed",
            "tie_embeddings": self.tie_embeddings,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.51.3",
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_hf_json(cls, cfg: dict) -> "HuginnConfig":
        eos = cfg.get("eos_token_id", 0)
        return cls(
            n_embd=cfg["n_embd"],
            n_heads=cfg["n_heads"],
            intermediate_size=cfg["intermediate_size"],
            vocab_size=cfg.get("padded_vocab_size", cfg["vocab_size"]),
            n_layers_in_prelude=cfg["n_layers_in_prelude"],
            n_layers_in_recurrent_block=cfg["n_layers_in_recurrent_block"],
            n_layers_in_coda=cfg["n_layers_in_coda"],
            mean_recurrence=cfg["mean_recurrence"],
            mean_backprop_depth=cfg.get("mean_backprop_depth", 8),
            block_size=cfg["block_size"],
            rope_base=float(cfg["rope_base"]),
            norm_eps=float(cfg["norm_eps"]),
            qk_bias=bool(cfg["qk_bias"]),
            tie_embeddings=bool(cfg["tie_embeddings"]),
            bos_token_id=cfg.get("bos_token_id", 0),
            eos_token_id=eos if isinstance(eos, int) else eos[0],
            pad_token_id=cfg.get("pad_token_id", 0),
        )


def rope_table(head_dim: int, length: int, theta: float) -> Tensor:
    """[1, length, 1, head_dim/2, 2] of (cos, sin), pair i rotating by pos * theta^(-2i/d)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ang = torch.outer(torch.arange(length, dtype=torch.float32), inv)
    return torch.stack([ang.cos(), ang.sin()], dim=-1)[None, :, None, :, :]


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """x [B, T, H, d]; rotates interleaved pairs (2i, 2i+1); table [1, T, 1, d/2, 2]."""
    xp = x.float().unflatten(-1, (-1, 2))
    a, b = xp[..., 0], xp[..., 1]
    cos, sin = table[..., 0], table[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).type_as(x)


def rope_cos_sin(table: Tensor) -> tuple[Tensor, Tensor]:
    """The table as two [1, T, 1, d] tensors, each value repeated for both members of a pair."""
    return table[..., 0].repeat_interleave(2, dim=-1), table[..., 1].repeat_interleave(2, dim=-1)


def apply_rope_fast(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Same rotation as apply_rope (same float operations) with fewer temporaries."""
    rot = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)
    return x * cos + rot * sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self, cfg: HuginnConfig):
        super().__init__()
        self.h, self.nh, self.hd = cfg.n_embd, cfg.n_heads, cfg.head_dim
        self.Wqkv = nn.Linear(self.h, 3 * self.h, bias=False)
        if cfg.qk_bias:
            self.qk_bias = nn.Parameter(torch.zeros(2, 1, self.nh, self.hd))
        else:
            self.qk_bias = None
        self.proj = nn.Linear(self.h, self.h, bias=False)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], cache: dict | None = None, slot: int | None = None) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.Wqkv(x).split(self.h, dim=-1)
        q = q.view(B, T, self.nh, self.hd)
        k = k.view(B, T, self.nh, self.hd)
        v = v.view(B, T, self.nh, self.hd)
        if self.qk_bias is not None:
            q = q + self.qk_bias[0]
            k = k + self.qk_bias[1]
        cos, sin = rope
        q, k = apply_rope_fast(q, cos, sin), apply_rope_fast(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, d]
        if cache is not None:
            if slot in cache:
                pk, pv = cache[slot]
                k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
            cache[slot] = (k, v)
        if k.shape[2] == T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            raise ValueError("multi-token extension of a cache is not needed here")
        return self.proj(y.transpose(1, 2).reshape(B, T, self.h))


class GatedMLP(nn.Module):
    def __init__(self, cfg: HuginnConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 2 * cfg.intermediate_size, bias=False)
        self.proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        g, u = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(g) * u)


class SandwichBlock(nn.Module):
    def __init__(self, cfg: HuginnConfig):
        super().__init__()
        self.norm_1 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm_2 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = GatedMLP(cfg)
        self.norm_3 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.norm_4 = RMSNorm(cfg.n_embd, cfg.norm_eps)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], cache: dict | None = None, slot: int | None = None) -> Tensor:
        x = self.norm_2(self.attn(self.norm_1(x), rope, cache, slot) + x)
        return self.norm_4(self.mlp(self.norm_3(x)) + x)


def trunc_normal_(t: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """Truncated normal on [-3 std, 3 std] by resampling (deterministic with a generator)."""
    with torch.no_grad():
        t.normal_(0.0, 1.0, generator=generator)
        bad = t.abs() > 3.0
        while bad.any():
            t[bad] = torch.randn(int(bad.sum()), generator=generator, dtype=t.dtype)
            bad = t.abs() > 3.0
        t.mul_(std)
    return t


class Huginn(nn.Module):
    def __init__(self, cfg: HuginnConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                prelude=nn.ModuleList(SandwichBlock(cfg) for _ in range(cfg.n_layers_in_prelude)),
                adapter=nn.Linear(2 * cfg.n_embd, cfg.n_embd, bias=False),
                core_block=nn.ModuleList(SandwichBlock(cfg) for _ in range(cfg.n_layers_in_recurrent_block)),
                coda=nn.ModuleList(SandwichBlock(cfg) for _ in range(cfg.n_layers_in_coda)),
                ln_f=RMSNorm(cfg.n_embd, cfg.norm_eps),
            )
        )
        # RoPE computed in f32 from theta; the bf16 copy is only written to the checkpoint.
        cos, sin = rope_cos_sin(rope_table(cfg.head_dim, cfg.block_size, cfg.rope_base))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def rope_at(self, start: int, end: int) -> tuple[Tensor, Tensor]:
        return self.rope_cos[:, start:end], self.rope_sin[:, start:end]

    # ---------------------------------------------------------------- initialisation
    def init_weights(self, generator: torch.Generator) -> None:
        """The paper's 'takase' init: std sqrt(2/(5h)), output projections scaled by depth."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.effective_expected_depth)
        F_ = self.cfg.intermediate_size
        for name, p in self.named_parameters():
            if "norm_" in name or name.endswith("ln_f.weight"):
                nn.init.ones_(p)
            elif name.endswith("qk_bias"):
                nn.init.zeros_(p)
            elif name.endswith("mlp.fc.weight"):
                with torch.no_grad():
                    trunc_normal_(p[:F_], std, generator)
                    trunc_normal_(p[F_:], out_std, generator)
            elif name.endswith("proj.weight"):
                trunc_normal_(p, out_std, generator)
            else:  # wte, Wqkv, adapter
                trunc_normal_(p, std, generator)

    # ---------------------------------------------------------------- pieces
    def embed(self, ids: Tensor, rope: tuple[Tensor, Tensor], cache: dict | None = None) -> Tensor:
        e = self.transformer.wte(ids) * self.cfg.emb_scale
        for j, blk in enumerate(self.transformer.prelude):
            e = blk(e, rope, cache, j)
        return e

    def initial_state(self, e: Tensor, init_scale: float, generator: torch.Generator | None) -> Tensor:
        if init_scale == 0:
            return torch.zeros_like(e)
        s = torch.empty_like(e)
        trunc_normal_(s, self.cfg.init_std * init_scale, generator)
        return s * self.cfg.emb_scale

    def core(self, s: Tensor, e: Tensor, rope: tuple[Tensor, Tensor], it: int, cache: dict | None = None) -> Tensor:
        s = self.transformer.adapter(torch.cat([s, e], dim=-1))
        P, C = self.cfg.n_layers_in_prelude, self.cfg.n_layers_in_recurrent_block
        for j, blk in enumerate(self.transformer.core_block):
            s = blk(s, rope, cache, P + it * C + j)
        return s

    def head(self, s: Tensor, rope: tuple[Tensor, Tensor], cache: dict | None = None) -> Tensor:
        """ln_f(s) -> coda -> ln_f -> tied head. Returns float32 logits."""
        x = self.transformer.ln_f(s)
        for j, blk in enumerate(self.transformer.coda):
            x = blk(x, rope, cache, -(j + 1))
        x = self.transformer.ln_f(x)
        return F.linear(x, self.transformer.wte.weight).float()

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        ids: Tensor,
        num_steps: int,
        n_grad: int | None = None,
        init_scale: float = 0.0,
        generator: torch.Generator | None = None,
        logits_at: Tensor | None = None,
        return_latents: bool = False,
    ):
        """One pass over ids [B, T] with num_steps core iterations.

        If n_grad is given, only the last n_grad iterations carry gradients (truncated backprop).
        logits_at [B, T] bool selects positions for the coda/head (saves work in training).
        """
        T = ids.shape[1]
        rope = self.rope_at(0, T)
        e = self.embed(ids, rope)
        s = self.initial_state(e, init_scale, generator)
        n_grad = num_steps if n_grad is None else min(n_grad, num_steps)
        with torch.no_grad():
            for i in range(num_steps - n_grad):
                s = self.core(s, e, rope, i)
        for i in range(num_steps - n_grad, num_steps):
            s = self.core(s, e, rope, i)
        logits = self.head(s, rope)
        if return_latents:
            return logits, self.transformer.ln_f(s)
        return logits

    # ---------------------------------------------------------------- cached decoding
    @torch.no_grad()
    def prefill(self, ids: Tensor, num_steps: int, init_scale: float = 0.0, generator=None) -> dict:
        """Runs ids [B, T] through the model with num_steps iterations, filling a KV cache
        (slot layout of SPEC §2, strategy `full`). Returns the cache."""
        cache: dict = {}
        T = ids.shape[1]
        rope = self.rope_at(0, T)
        e = self.embed(ids, rope, cache)
        s = self.initial_state(e, init_scale, generator)
        for i in range(num_steps):
            s = self.core(s, e, rope, i, cache)
        self.head(s, rope, cache)
        return cache

    @torch.no_grad()
    def step_last(
        self,
        cache: dict,
        tok: Tensor,
        pos: int,
        max_steps: int,
        init_scale: float = 0.0,
        generator=None,
    ):
        """Feeds one token per row (tok [B]) at position pos through the cached model and runs
        max_steps iterations, yielding after each iteration i (1-based) the pair
        (s_i [B, 1, h], head) where head() evaluates coda + lm head for this iteration.

        Every row runs all iterations (rows are independent); callers pick each row's exit step.
        The coda KV entries of the last head() call are left in the cache."""
        rope = self.rope_at(pos, pos + 1)
        e = self.embed(tok[:, None], rope, cache)
        s = self.initial_state(e, init_scale, generator)
        s0 = s
        for i in range(max_steps):
            s = self.core(s, e, rope, i, cache)

            def head_fn(s=s):
                c = dict(cache)  # coda slots are overwritten per check: keep the prefix only
                for j in range(len(self.transformer.coda)):
                    if -(j + 1) in cache:
                        pk, pv = cache[-(j + 1)]
                        c[-(j + 1)] = (pk[:, :, :pos], pv[:, :, :pos])
                out = self.head(s, rope, c)
                for j in range(len(self.transformer.coda)):
                    cache[-(j + 1)] = c[-(j + 1)]
                return out[:, -1]

            yield i + 1, s0, s, head_fn
            s0 = s


# -------------------------------------------------------------------- checkpoint I/O

def _bf16_rope_buffer(cfg: HuginnConfig) -> Tensor:
    return rope_table(cfg.head_dim, cfg.block_size, cfg.rope_base).to(torch.bfloat16)


def save_hf(model: Huginn, out_dir: str, n_shards: int = 3) -> None:
    """Writes bf16 sharded safetensors + index + config.json in the Huginn HF layout."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    cfg = model.cfg
    # Module order as Hugging Face saves it: freqs_cis buffer first, then parameters.
    tensors: list[tuple[str, Tensor]] = [("freqs_cis", _bf16_rope_buffer(cfg))]
    for name, p in model.named_parameters():
        tensors.append((name, p.detach().to(torch.bfloat16).contiguous()))
    total = sum(t.numel() * t.element_size() for _, t in tensors)
    limit = math.ceil(total / n_shards)
    shards: list[list[tuple[str, Tensor]]] = [[]]
    size = 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit and len(shards) < n_shards:
            shards.append([])
            size = 0
        shards[-1].append((name, t))
        size += nbytes
    n = len(shards)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({k: v for k, v in shard}, os.path.join(out_dir, fname), metadata={"format": "pt"})
        for k, _ in shard:
            weight_map[k] = fname
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg.to_hf_json(), f, indent=2, sort_keys=True)
        f.write("\n")


def load_hf(hf_dir: str, dtype=torch.float32) -> Huginn:
    """Loads a Huginn HF directory (sharded or single-file safetensors) into `Huginn`."""
    from safetensors.torch import load_file

    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = HuginnConfig.from_hf_json(json.load(f))
    model = Huginn(cfg)
    idx = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state = {}
    for fn in files:
        state.update(load_file(os.path.join(hf_dir, fn)))
    state.pop("freqs_cis", None)
    state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"{hf_dir}: missing {missing}, unexpected {unexpected}")
    return model.to(dtype)


# -------------------------------------------------------------------- exit criteria (SPEC §2)

class ExitCriterion:
    """Per-row exit test after each core iteration; names and defaults as in SPEC §2.

    `check(s_prev, s, head_fn)` returns (exit_mask [B] bool, values [B], logits or None)."""

    needs_head = False

    def __init__(self, name: str, tau: float | None = None, vocab: int = 0):
        defaults = {
            "kl": 1e-3,
            "minp-kl": 1e-5,
            "entropy-diff": 1e-3,
            "latent-diff": 0.03,
            "cosine": 1e-3,
            "argmax-stability": 5,
            "none": 0.0,
        }
        if name not in defaults:
            raise ValueError(f"unknown exit criterion {name!r}")
        self.name = name
        self.tau = defaults[name] if tau is None else tau
        self.V = vocab
        self.needs_head = name in ("kl", "minp-kl", "entropy-diff", "argmax-stability")
        self.prev = None
        self.count = None

    def reset(self, batch: int) -> None:
        self.prev = None
        self.count = torch.zeros(batch, dtype=torch.long)

    def _minp_logp(self, logits: Tensor) -> Tensor:
        p = F.softmax(logits, dim=-1)
        p = torch.where(p < 0.1 * p.max(dim=-1, keepdim=True).values, torch.full_like(p, 1.0 / self.V), p)
        return (p / p.sum(dim=-1, keepdim=True)).log()

    def check(self, s_prev: Tensor, s: Tensor, head_fn):
        B = s.shape[0]
        if self.name == "none":
            return torch.zeros(B, dtype=torch.bool), torch.zeros(B), None
        if self.name == "latent-diff":
            v = ((s - s_prev).norm(dim=-1) / s.norm(dim=-1)).mean(dim=-1)
            return v < self.tau, v, None
        if self.name == "cosine":
            cos = (s * s_prev).sum(-1) / s.norm(dim=-1) / s_prev.norm(dim=-1)
            v = 1 - cos.mean(dim=-1)
            return v < self.tau, v, None
        logits = head_fn()
        if self.name in ("kl", "minp-kl"):
            logp = F.log_softmax(logits, dim=-1) if self.name == "kl" else self._minp_logp(logits)
            prev = self.prev if self.prev is not None else torch.full_like(logp, -math.log(self.V))
            v = (prev.exp() * (prev - logp)).sum(dim=-1)  # KL(p_prev || p_cur)
            self.prev = logp
            return v < self.tau, v, logits
        if self.name == "entropy-diff":
            p = F.softmax(logits, dim=-1)
            ent = -(p * (p + 1e-10).log()).sum(dim=-1)
            prev = self.prev if self.prev is not None else torch.full_like(ent, 100.0)
            v = (ent - prev).abs()
            self.prev = ent
            return v < self.tau, v, logits
        # argmax-stability
        am = logits.argmax(dim=-1)
        prev = self.prev if self.prev is not None else torch.full_like(am, -1)
        self.count = torch.where(am == prev, self.count + 1, torch.zeros_like(self.count))
        self.prev = am
        return self.count >= self.tau, self.count.float(), logits
