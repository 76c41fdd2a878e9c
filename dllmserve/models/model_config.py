"""The architecture-neutral description of a model that everything past the config readers
sees (`dllmserve.models.config` reads a checkpoint's config.json into it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MoeConfig:
    """The mixture-of-experts FFN of the layers that have one (dllmserve.models.moe)."""

    num_experts: int
    top_k: int
    expert_hidden: int  # intermediate size of one routed expert
    shared_hidden: int  # intermediate size of the shared expert; 0: none
    moe_layers: tuple[bool, ...]  # per layer: MoE FFN (True) or the dense MLP of `mlp_hidden`
    router: str  # "softmax" (LLaDA-MoE) or "sigmoid_group" (LLaDA2, BailingMoeV2)
    expert_bias: bool  # a per-expert routing bias tensor in the checkpoint
    n_group: int = 1  # sigmoid_group: expert groups, of which the best topk_group are kept
    topk_group: int = 1
    routed_scaling: float = 1.0  # sigmoid_group: factor on the normalised weights


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # the sampler family: "llada" (LLaDA-8B, LLaDA-MoE) or "dream"
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_hidden: int
    vocab_size: int  # rows of the embedding / LM head
    rope_theta: float
    rms_eps: float
    max_len: int
    mask_token_id: int
    eos_token_id: int
    qkv_bias: bool
    tied_head: bool
    shifted_logits: bool  # Dream: position i is predicted from hidden state i-1
    rope_in_fp32: bool  # LLaDA rotates q/k in fp32; Dream applies fp32 cos/sin in model dtype
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (LLaDA-MoE's qk_layernorm)
    rotary_dim: int = 0  # RoPE on each head's first rotary_dim dims; 0: the whole head
    clip_qkv: float | None = None  # q, k, v clamped to [-clip, clip] after the q/k norm
    moe: MoeConfig | None = None  # set for LLaDA-MoE (whose tensors are named its own way)
    # LLaDA2: block-causal attention over blocks aligned to absolute positions from 0, each
    # block denoised after the last (docs/models.md); the block length its sampler defaults to
    block_diffusion: bool = False
    default_block_length: int | None = None

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def layout(self) -> str:
        """The checkpoint's tensor naming: "llada" (OLMo), "dream" (Qwen2), "llada-moe" or
        "llada2"."""
        if self.block_diffusion:
            return "llada2"
        return "llada-moe" if self.moe is not None else self.arch

    @property
    def rope_dim(self) -> int:
        return self.rotary_dim or self.head_dim

    @property
    def ffn_width(self) -> int:
        """The widest FFN intermediate a token needs (activation memory sizing)."""
        if self.moe is None:
            return self.mlp_hidden
        moe = self.moe.top_k * self.moe.expert_hidden + self.moe.shared_hidden
        return max(self.mlp_hidden, moe)

    @property
    def default_schedule(self) -> str:
        """The commit schedule of the model's own sampler (`SamplingParams.schedule` unset)."""
        return "dream" if self.arch == "dream" else "blocks"
