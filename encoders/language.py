"""The language core: a sparse mixture-of-experts transformer (shared + routed experts, top-k routing).

It is a transformers ``PreTrainedModel``, so ``save_pretrained``, ``from_pretrained`` and ``generate``
work. It runs two ways: as a bidirectional text encoder (the text tower for search) and as a decoder
over a prefix of other tokens (fused image and question tokens, for answers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from mmodal.kernels.attention import masked_attention
from mmodal.kernels.moe import moe_experts


@dataclass
class TextConfig:
    """The language core's sizes: the one place they are defined (a model's config.json holds them)."""

    vocab_size: int = 512  # a model built with a tokenizer takes the tokenizer's size instead
    hidden_size: int = 128  # model width
    num_layers: int = 3
    num_heads: int = 4
    n_shared_experts: int = 1  # experts every token passes through
    n_routed_experts: int = 4  # experts a router picks from; 0 makes a dense core
    experts_per_token: int = 2  # routed experts each token is sent to (top-k)
    expert_hidden_size: int = 192  # width of one expert's SwiGLU
    max_position_embeddings: int = 96  # prefix + text tokens
    aux_loss_coef: float = 0.01  # weight of the load-balance loss
    max_text_tokens: int = 32  # longer texts are cut to this many tokens (the core also takes a prefix)
    known_words: tuple[str, ...] = ()  # every word of the texts it was trained on (none: not recorded)


_SIZES = TextConfig()


class MoEConfig(PretrainedConfig):
    """The language core's transformers config: :class:`TextConfig`'s sizes and the tokenizer's special ids."""

    model_type = "mmodal_moe"

    @classmethod
    def from_sizes(cls, sizes: TextConfig, vocab_size: int, **special_ids) -> MoEConfig:
        fields = {k: v for k, v in sizes.__dict__.items() if k not in ("vocab_size", "max_text_tokens", "known_words")}
        return cls(vocab_size=vocab_size, **fields, **special_ids)

    def __init__(
        self,
        vocab_size: int = _SIZES.vocab_size,
        hidden_size: int = _SIZES.hidden_size,
        num_layers: int = _SIZES.num_layers,
        num_heads: int = _SIZES.num_heads,
        n_shared_experts: int = _SIZES.n_shared_experts,
        n_routed_experts: int = _SIZES.n_routed_experts,
        experts_per_token: int = _SIZES.experts_per_token,
        expert_hidden_size: int = _SIZES.expert_hidden_size,
        max_position_embeddings: int = _SIZES.max_position_embeddings,
        aux_loss_coef: float = _SIZES.aux_loss_coef,
        router_jitter: float = 0.0,  # multiplicative noise on router inputs while training
        dropout: float = 0.0,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.n_shared_experts = n_shared_experts
        self.n_routed_experts = n_routed_experts
        self.experts_per_token = experts_per_token
        self.expert_hidden_size = expert_hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.aux_loss_coef = aux_loss_coef
        self.router_jitter = router_jitter
        self.dropout = dropout
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        # n_routed_experts = 0 makes a dense core: every token through the shared experts alone.
        if n_routed_experts and not 1 <= experts_per_token <= n_routed_experts:
            raise ValueError(
                f"experts_per_token must be in 1..n_routed_experts={n_routed_experts}, got {experts_per_token}"
            )


@dataclass
class RouterStats:
    """What the routers did in the last forward pass, summed over layers."""

    tokens_per_expert: torch.Tensor  # (E,) tokens dispatched to each routed expert
    entropy: torch.Tensor  # mean router entropy per token, in nats


@dataclass
class MoEOutput(ModelOutput):
    """Forward result: logits over the vocabulary, hidden states, the load-balance loss and the LM loss."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.gate_up = nn.Linear(hidden, 2 * inner, bias=False)
        self.down = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class SparseMoE(nn.Module):
    """Shared experts plus top-k routed experts, with a Switch-style load-balance loss."""

    def __init__(self, config: MoEConfig):
        super().__init__()
        h, f, e = config.hidden_size, config.expert_hidden_size, config.n_routed_experts
        self.top_k, self.n_experts, self.jitter = config.experts_per_token, e, config.router_jitter
        self.shared = SwiGLU(h, f * config.n_shared_experts) if config.n_shared_experts else None
        if e == 0:  # a dense core: no router, no routed experts
            return
        self.router = nn.Linear(h, e, bias=False)
        # Routed expert weights stacked, so that a grouped matmul can run them all at once.
        self.w_gate_up = nn.Parameter(torch.empty(e, h, 2 * f))
        self.w_down = nn.Parameter(torch.empty(e, f, h))
        nn.init.normal_(self.w_gate_up, std=1 / math.sqrt(h))
        nn.init.normal_(self.w_down, std=1 / math.sqrt(f))

    def forward(
        self, x: torch.Tensor, token_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, RouterStats]:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # (N, H)
        if self.n_experts == 0:
            no_routing = RouterStats(tokens_per_expert=tokens.new_zeros(0), entropy=tokens.new_zeros(()))
            return self.shared(tokens).reshape(shape), tokens.new_zeros(()), no_routing
        keep = (
            token_mask.reshape(-1).bool() if token_mask is not None else torch.ones_like(tokens[:, 0], dtype=torch.bool)
        )
        router_in = tokens
        if self.training and self.jitter > 0:
            router_in = tokens * torch.empty_like(tokens).uniform_(1 - self.jitter, 1 + self.jitter)
        router_logits = self.router(router_in)  # (N, E)
        probs = router_logits.float().softmax(dim=-1)
        routed, _, experts = moe_experts(tokens, router_logits, self.w_gate_up, self.w_down, self.top_k, keep)
        out = routed + (self.shared(tokens) if self.shared is not None else 0)
        # Load balance (Switch Transformer): E * sum_e fraction_of_assignments_e * mean_prob_e, over real tokens.
        real = probs[keep]
        assignments = F.one_hot(experts[keep], self.n_experts).sum(dim=1).float()  # (n, E)
        fraction = assignments.mean(dim=0) / self.top_k
        aux = self.n_experts * (fraction * real.mean(dim=0)).sum()
        entropy = -(real * real.clamp_min(1e-9).log()).sum(dim=-1).mean()
        stats = RouterStats(tokens_per_expert=assignments.sum(dim=0).detach(), entropy=entropy.detach())
        return out.reshape(shape), aux, stats


class Block(nn.Module):
    def __init__(self, config: MoEConfig):
        super().__init__()
        self.n_heads = config.num_heads
        self.norm1 = nn.LayerNorm(config.hidden_size)
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm2 = nn.LayerNorm(config.hidden_size)
        self.moe = SparseMoE(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor, causal: bool = False, n_prefix: int = 0):
        """token_mask (B, T) bool of real tokens; causal over the text with a bidirectional prefix of n_prefix."""
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.n_heads, c // self.n_heads).permute(2, 0, 3, 1, 4)
        # A fully padded query row sees itself, so it stays finite; real rows never see padding.
        attn = masked_attention(q, k, v, key_mask=token_mask, causal=causal, prefix=n_prefix, see_self=True)
        x = x + self.dropout(self.proj(attn.transpose(1, 2).reshape(b, t, c)))
        moe_out, aux, stats = self.moe(self.norm2(x), token_mask)
        return x + self.dropout(moe_out), aux, stats


class MoELanguageModel(PreTrainedModel, GenerationMixin):
    """Sparse-MoE transformer usable as a text encoder and as a prefix decoder."""

    config_class = MoEConfig
    base_model_prefix = "moe"
    main_input_name = "input_ids"
    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}

    def __init__(self, config: MoEConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.router_stats: list[RouterStats] = []
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        prefix_embeds: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        causal: bool = True,
        **kwargs,
    ) -> MoEOutput:
        """Runs the core over ``[prefix_embeds; tokens]``.

        Args:
            input_ids: (B, T) token ids (or ``inputs_embeds`` (B, T, H)).
            attention_mask: (B, T) 1 for real tokens, 0 for padding.
            prefix_embeds: (B, P, H) other tokens (e.g. fused image and question) to decode after.
            prefix_mask: (B, P) 1 for real prefix tokens.
            labels: (B, T) next-token targets over the text part; -100 is ignored.
            causal: False runs the core as a bidirectional encoder.

        Returns:
            ``MoEOutput`` with logits and hidden states for the text positions only.
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, H)
        b, t, _ = inputs_embeds.shape
        if attention_mask is None:
            attention_mask = torch.ones(b, t, dtype=torch.long, device=inputs_embeds.device)
        n_prefix = 0
        x = inputs_embeds
        mask = attention_mask
        if prefix_embeds is not None:
            n_prefix = prefix_embeds.shape[1]
            if prefix_mask is None:
                prefix_mask = torch.ones(b, n_prefix, dtype=attention_mask.dtype, device=x.device)
            x = torch.cat([prefix_embeds.to(x.dtype), x], dim=1)  # (B, P+T, H)
            mask = torch.cat([prefix_mask.to(attention_mask.dtype), attention_mask], dim=1)
        total = x.shape[1]
        if total > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {total} tokens exceeds max_position_embeddings={self.config.max_position_embeddings}; "
                "shorten the text"
            )
        x = x + self.embed_positions(torch.arange(total, device=x.device))
        token_mask = mask.bool()
        aux_total = x.new_zeros(())
        self.router_stats = []
        for layer in self.layers:
            x, aux, stats = layer(x, token_mask, causal=causal, n_prefix=n_prefix)
            aux_total = aux_total + aux
            self.router_stats.append(stats)
        hidden = self.norm(x)[:, n_prefix:]  # (B, T, H)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return MoEOutput(loss=loss, logits=logits, hidden_states=hidden, aux_loss=aux_total * self.config.aux_loss_coef)

    def prepare_inputs_for_generation(
        self, input_ids, attention_mask=None, prefix_embeds=None, prefix_mask=None, **kwargs
    ):
        # No key/value cache: answers are a few tokens long, so each step reruns prefix and text.
        if attention_mask is not None and attention_mask.shape[1] != input_ids.shape[1]:
            attention_mask = None
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prefix_embeds": prefix_embeds,
            "prefix_mask": prefix_mask,
        }

    def expert_load(self) -> torch.Tensor:
        """Share of routed assignments per expert in the last forward pass, summed over layers (sums to 1)."""
        counts = torch.stack([s.tokens_per_expert for s in self.router_stats]).sum(dim=0)
        return counts / counts.sum().clamp_min(1)

    def router_entropy(self) -> float:
        """Mean router entropy per token in the last forward pass, as a share of its maximum log(E): 1 means
        routers spread every token evenly, 0 that each token's choice is certain."""
        if not self.router_stats or self.config.n_routed_experts < 2:
            return float("nan")
        nats = torch.stack([s.entropy for s in self.router_stats]).mean()
        return float(nats / math.log(self.config.n_routed_experts))
