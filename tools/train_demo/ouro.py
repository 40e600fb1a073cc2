"""A small PyTorch implementation of Ouro (LoopLM, ByteDance): the whole decoder stack looped
`total_ut_steps` times with a learned exit gate.

Written from tests/fixtures/tiny-ouro/README.md ("The official forward pass"); no code is taken
from the official modeling file. Parameter names and the on-disk layout are those of the Hugging
Face Ouro checkpoints, so `save_hf` writes a directory that `raven convert` (and the official
remote code) read unchanged.

Forward pass (T loop steps, L layers of shared weights):
    x = embed_tokens(ids)                                   # no embedding scale
    for t in 0..T-1:
        for l in 0..L-1:
            x = x + input_layernorm_2(attn(input_layernorm(x)))
            x = x + post_attention_layernorm_2(mlp(post_attention_layernorm(x)))
        x = norm(x)                                         # shared final norm, feeds step t+1
        hs[t] = x; gate[t] = early_exit_gate(x)             # Linear h -> 1 with bias
    logits_t = lm_head(hs[t])                               # untied head
Attention: q/k/v/o without bias, rotate-half RoPE on q and k (theta = rope_theta), causal softmax
with scale head_dim**-0.5, GQA by repeat_kv (query head i reads KV head i // (H / K)).
MLP: down(silu(gate(x)) * up(x)). RMSNorm: x * rsqrt(mean(x^2) + eps) in float32, then * weight.

Exit read-out: lambda_t = sigmoid(gate_t); p_t = lambda_t * S, S <- S * (1 - lambda_t) for
t < T-1, p_{T-1} = S; with threshold q the read-out step of a position is the first t with
cumsum(p)_t >= q (T-1 if none). See `exit_distribution` and `exit_steps`.

Main pieces:
- `OuroConfig`: hyperparameters; `to_hf_json()` gives the keys of the fixture's config.json.
- `Ouro`: the model. `forward(ids, steps)` returns per-step hidden states and gate logits;
  `logits(hidden)` applies lm_head.
- `save_hf` / `load_hf`: one bf16 `model.safetensors` (no index), config.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class OuroConfig:
    vocab_size: int = 1000
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    head_dim: int = 16
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    max_position_embeddings: int = 256
    total_ut_steps: int = 4
    early_exit_threshold: float = 1.0
    bos_token_id: int = 0
    eos_token_id: int = 0
    initializer_range: float = 0.02

    def to_hf_json(self) -> dict:
        """config.json with exactly the keys of tests/fixtures/tiny-ouro/config.json."""
        return {
            "architectures": ["OuroForCausalLM"],
            "attention_dropout": 0.0,
            "auto_map": {
                "AutoConfig": "configuration_ouro.OuroConfig",
                "AutoModel": "modeling_ouro.OuroModel",
                "AutoModelForCausalLM": "modeling_ouro.OuroForCausalLM",
            },
            "bos_token_id": self.bos_token_id,
            "early_exit_threshold": float(self.early_exit_threshold),
            "eos_token_id": self.eos_token_id,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": self.initializer_range,
            "intermediate_size": self.intermediate_size,
            "layer_types": ["full_attention"] * self.num_hidden_layers,
            "max_position_embeddings": self.max_position_embeddings,
            "max_window_layers": 28,
            "model_type": "ouro",
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": None,
            "rope_theta": float(self.rope_theta),
            "sliding_window": None,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "total_ut_steps": self.total_ut_steps,
            "transformers_version": "4.57.1",
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_hf_json(cls, d: dict) -> "OuroConfig":
        if d.get("model_type") != "ouro":
            raise ValueError(f"model_type {d.get('model_type')!r} is not 'ouro'")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {d['hidden_act']} (Ouro uses silu)")
        if d.get("rope_scaling") is not None:
            raise ValueError("rope_scaling is not supported here (default RoPE only)")
        if d.get("tie_word_embeddings", False):
            raise ValueError("tied embeddings are not Ouro's layout")
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
            head_dim=d.get("head_dim", d["hidden_size"] // d["num_attention_heads"]),
            rms_norm_eps=d["rms_norm_eps"],
            rope_theta=d["rope_theta"],
            max_position_embeddings=d["max_position_embeddings"],
            total_ut_steps=d.get("total_ut_steps", 4),
            early_exit_threshold=d.get("early_exit_threshold", 1.0),
            bos_token_id=d.get("bos_token_id", 0),
            eos_token_id=d.get("eos_token_id", 0),
            initializer_range=d.get("initializer_range", 0.02),
        )


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dt = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dt)


def rope_cos_sin(cfg: OuroConfig, n: int, offset: int = 0, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """cos, sin [n, head_dim] for positions offset..offset+n-1 (rotate-half layout: the
    frequencies repeated twice), computed in float32 and cast to dtype."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    pos = torch.arange(offset, offset + n, dtype=torch.float32)
    freqs = pos[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    d = x.shape[-1] // 2
    return torch.cat([-x[..., d:], x[..., :d]], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: OuroConfig):
        super().__init__()
        self.cfg = cfg
        H, K, d, h = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        if H % K:
            raise ValueError(f"num_attention_heads {H} is not a multiple of num_key_value_heads {K}")
        self.q_proj = nn.Linear(h, H * d, bias=False)
        self.k_proj = nn.Linear(h, K * d, bias=False)
        self.v_proj = nn.Linear(h, K * d, bias=False)
        self.o_proj = nn.Linear(H * d, h, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, n, _ = x.shape
        H, K, d = self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim
        q = self.q_proj(x).view(B, n, H, d).transpose(1, 2)
        k = self.k_proj(x).view(B, n, K, d).transpose(1, 2)
        v = self.v_proj(x).view(B, n, K, d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if K != H:  # repeat_kv: query head i reads KV head i // (H / K)
            k = k.repeat_interleave(H // K, dim=1)
            v = v.repeat_interleave(H // K, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=d**-0.5)
        return self.o_proj(y.transpose(1, 2).reshape(B, n, H * d))


class MLP(nn.Module):
    def __init__(self, cfg: OuroConfig):
        super().__init__()
        h, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(h, f, bias=False)
        self.up_proj = nn.Linear(h, f, bias=False)
        self.down_proj = nn.Linear(f, h, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Sandwich layer: norm before and after each branch, then the residual add."""

    def __init__(self, cfg: OuroConfig):
        super().__init__()
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(h, eps)
        self.input_layernorm_2 = RMSNorm(h, eps)
        self.post_attention_layernorm = RMSNorm(h, eps)
        self.post_attention_layernorm_2 = RMSNorm(h, eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.input_layernorm_2(self.self_attn(self.input_layernorm(x), cos, sin))
        x = x + self.post_attention_layernorm_2(self.mlp(self.post_attention_layernorm(x)))
        return x


class OuroModel(nn.Module):
    def __init__(self, cfg: OuroConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.early_exit_gate = nn.Linear(cfg.hidden_size, 1, bias=True)


class Ouro(nn.Module):
    """Parameter names as in the HF checkpoint: model.* and lm_head.weight."""

    def __init__(self, cfg: OuroConfig):
        super().__init__()
        self.cfg = cfg
        self.model = OuroModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def init_weights(self, gen: torch.Generator) -> None:
        """Normal(0, initializer_range) for matrices and the embedding (Qwen2/Ouro's
        `_init_weights`), ones for norms, zero gate bias; drawn in module order from `gen`."""
        std = self.cfg.initializer_range
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("layernorm.weight") or name.endswith("layernorm_2.weight") or name == "model.norm.weight":
                    p.fill_(1.0)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)

    def forward(self, ids: Tensor, steps: int | None = None) -> tuple[Tensor, Tensor]:
        """ids [B, n] -> (hidden [T, B, n, h] after each step's final norm, gate logits [T, B, n])."""
        T = self.cfg.total_ut_steps if steps is None else steps
        x = self.model.embed_tokens(ids)
        cos, sin = rope_cos_sin(self.cfg, ids.shape[1], dtype=x.dtype)
        hs, gates = [], []
        for _ in range(T):
            for layer in self.model.layers:
                x = layer(x, cos, sin)
            x = self.model.norm(x)
            hs.append(x)
            gates.append(self.model.early_exit_gate(x).squeeze(-1))
        return torch.stack(hs), torch.stack(gates)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)


def exit_distribution(gate_logits: Tensor) -> Tensor:
    """gate logits [T, ...] -> exit pdf p [T, ...]: p_t = lambda_t * S, S <- S (1 - lambda_t)
    for t < T-1, p_{T-1} = S (the last gate is unused)."""
    lam = torch.sigmoid(gate_logits)
    T = gate_logits.shape[0]
    S = torch.ones_like(lam[0])
    ps = []
    for t in range(T - 1):
        ps.append(lam[t] * S)
        S = S * (1 - lam[t])
    ps.append(S)
    return torch.stack(ps)


def exit_steps(gate_logits: Tensor, q: float) -> Tensor:
    """The official threshold read-out: first t with cumsum(p)_t >= q, else T-1. [T, ...] -> [...]"""
    cdf = torch.cumsum(exit_distribution(gate_logits), dim=0)
    T = cdf.shape[0]
    hit = cdf >= q
    idx = torch.arange(T).view(T, *([1] * (cdf.dim() - 1))).expand_as(cdf)
    return torch.where(hit, idx, torch.full_like(idx, T - 1)).min(dim=0).values


# ------------------------------------------------------------------------ Hugging Face layout

def save_hf(model: Ouro, out_dir: str) -> None:
    """Writes ONE bf16 `model.safetensors` (no index; header metadata {"format": "pt"} as the
    official `save_pretrained` writes, cf. tests/fixtures/tiny-ouro/gqa) and config.json."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors = {name: p.detach().to(torch.bfloat16).contiguous() for name, p in model.named_parameters()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(model.cfg.to_hf_json(), f, indent=2, sort_keys=True)
        f.write("\n")


def load_hf(hf_dir: str, dtype=torch.float32) -> Ouro:
    """Loads an Ouro HF directory (single file or sharded with an index) into `Ouro`."""
    from safetensors.torch import load_file

    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = OuroConfig.from_hf_json(json.load(f))
    model = Ouro(cfg)
    idx = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state = {}
    for fn in files:
        state.update(load_file(os.path.join(hf_dir, fn)))
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"{hf_dir}: missing {missing}, unexpected {unexpected}")
    return model.to(dtype)
