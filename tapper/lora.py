"""LoRA through peft: where adapters go on an arbitrary HF causal LM."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model
from torch import nn

_ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj")


def attention_targets(model: nn.Module) -> list[str] | None:
    """The attention projections of a Llama-style model; None lets peft pick its per-architecture default."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [n for n in _ATTENTION_NAMES if n in leaves]
    return found or None


def add_lora(model: nn.Module, r: int, alpha: int, dropout: float, targets: list[str] | None = None):
    """Wrap `model` in a peft LoRA; only the adapter weights are trainable afterwards."""
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=targets if targets is not None else attention_targets(model),
    )
    return get_peft_model(model, config)
