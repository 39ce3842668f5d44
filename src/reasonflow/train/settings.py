"""Training settings (no torch import: Snakemake's parse and the NeMo backend read them too)."""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
METRICS = ["step", "loss", "lr", "samples", "tokens", "tokens_per_s", "memory_mb", "grad_norm"]


@dataclass(frozen=True)
class TrainSettings:
    lora_rank: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))
    lr: float = 1e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.001
    grad_clip: float = 1.0
    warmup_ratio: float = 0.05
    global_batch_size: int = 256
    micro_batch_size: int = 1
    max_steps: int = 2000
    max_length: int = 8192
    packing: bool = True
    data_order: str = "sequential"
    seed: int = 1234
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    gradient_checkpointing: bool = False
    checkpoint_layers: int = -1  # with gradient_checkpointing: recompute the first N decoder layers (-1 = all)
    # the fast path (reasonflow.train.fast); the plain path is attention=sdpa and every lever off
    attention: str = "varlen"  # varlen (no mask, FlashAttention varlen on CUDA) | sdpa (block-diagonal mask)
    fused_loss: bool = True  # chunked LM head + cross entropy over answer tokens, no full fp32 logits
    loss_chunk: int = 4096
    fused_lora: bool = True  # adapter in the activations' dtype, accumulated by one addmm
    fused_norm_mlp: bool = True  # RMSNorm / SwiGLU autograd functions that save only their inputs
    compile_kernels: bool = False  # torch.compile the fused norm / SwiGLU bodies
    compile_layers: bool = False  # torch.compile each decoder layer whole (fuses RoPE, residuals, norms, ...)
    pack_strategy: str = "best_fit"  # best_fit (within a step: less padding) | in_order
    pack_length: int = 0  # tokens per packed row; 0 = max_length
    gpus: int = 1  # data-parallel processes on one node (torchrun; reasonflow.train.distributed)
    checkpoint_every: int = 100
    keep_last: int = 3
    # Inside a Slurm job with a time limit: stop this many seconds (plus one step) before the job's end
    # time with a complete checkpoint and exit 75, as on SIGUSR1; 0 = run until killed
    stop_margin_s: int = 0
    # Train in segments (train.segment_steps): stop at this step with a complete checkpoint and return
    # without writing the adapter; the next segment's job resumes there. 0 = run to max_steps
    stop_at_step: int = 0
    # Keep the adapter of every adapter_every-th step (below max_steps) in the run's snapshot folder,
    # outside the checkpoint rotation, for evaluate.steps (accuracy against training step). 0 = none
    adapter_every: int = 0
    overlong: str = "truncate"
    merge_model: bool = False

    @classmethod
    def from_config(cls, cfg: dict) -> "TrainSettings":
        return cls(**{k: v for k, v in cfg.items() if k in cls.__dataclass_fields__})

    def __post_init__(self):
        for name, allowed in (("attention", ("varlen", "sdpa")), ("pack_strategy", ("best_fit", "in_order")),
                              ("data_order", ("sequential", "shuffle")), ("precision", ("auto", "bf16", "fp32"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"train.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not isinstance(self.gpus, int) or self.gpus < 1:
            raise ValueError(f"train.gpus must be a whole number >= 1, got {self.gpus!r}")
        if self.pack_length and self.pack_length < self.max_length:
            raise ValueError(f"train.pack_length ({self.pack_length}) must be 0 or >= max_length ({self.max_length})")

    @property
    def row_length(self) -> int:
        return self.pack_length or self.max_length


# Fields that change how a step is computed, never which samples it sees or the function it computes:
# a run resumes its checkpoints across changes of these (e.g. compile switched off to debug a node).
SPEED_ONLY = ("gradient_checkpointing", "checkpoint_layers", "attention", "fused_loss", "loss_chunk", "fused_lora",
              "fused_norm_mlp", "compile_kernels", "compile_layers", "pack_strategy", "pack_length", "gpus")

# Fields that say when a job stops or what it keeps, never what it computes: also left out of a run's
# identity.
RUN_CONTROL = ("stop_margin_s", "stop_at_step", "adapter_every")

# The trainer as it was before the fast path: what bench/train_throughput.py calls "plain".
PLAIN = {"attention": "sdpa", "fused_loss": False, "fused_lora": False, "fused_norm_mlp": False,
         "compile_kernels": False, "compile_layers": False, "checkpoint_layers": -1, "pack_strategy": "in_order"}
