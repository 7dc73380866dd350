"""A trained run as a standard Hugging Face model folder, plus what turns requests into its prompt embeddings.

TAP-PER changes nothing inside the transformer at serving time: the stage-1 task LoRA and the shared bridge
LoRA merge into the weights, and each request becomes its token embeddings with the soft prefix
P = P_u + P_q in front. So any engine that generates from prompt embeddings (vLLM's
`{"prompt_embeds": tensor}` with `enable_prompt_embeds=True`) can serve a run from two things:

- the merged model, a plain HF folder (`AutoModelForCausalLM.from_pretrained(out)` loads it), written by
  `export_run` / `tapper export --run RUN --out DIR`;
- a `PromptEmbedder` beside the engine, which builds, for each request, the (T_i, d) tensor
  [P_i ; embeddings of the formatted prompt's tokens]. It reads only the input embedding table of the
  exported model (not the transformer), P_q's weights and the user table, all kept in the folder.

Layout of an export:

    out/config.json, model.safetensors, generation_config.json, tokenizer files   (the merged model)
    out/tapper_prefix.json     what the prefix is and how to use the folder (see `PREFIX_INFO_NAME`)
    out/tapper/tapper_config.json, query_prefix.safetensors, user_state/   (P_q, the user table)

Generating from `request_embeddings(...)` with plain transformers gives the engine's answers token for token
(tests/test_export.py). The vLLM call is documented in docs/scaling.md and is untested here (no GPU).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file
from torch import nn

from tapper.backbone import Backbone
from tapper.examples import Example
from tapper.io_utils import atomic_replace_dir
from tapper.prefix.config import TapperConfig
from tapper.prefix.model import (
    ANCHOR_KEY,
    CONFIG_NAME,
    QUERY_PREFIX_NAME,
    TASK_ADAPTER_DIR,
    USER_STATE_DIR,
    TapperModel,
)
from tapper.prefix.user_state import UserStateTable

PREFIX_INFO_NAME = "tapper_prefix.json"
PREFIX_DIR = "tapper"  # inside an export: P_q's weights, the run's config and its user table
EXPORT_FORMAT = "tapper-prompt-embeds"
EXPORT_VERSION = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------- embeddings

def request_embeddings(
    model: TapperModel, examples: Sequence[Example], user_rows: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """One (T_i, d) tensor per example: its prefix P_i = P_u + P_q (L rows) followed by the input embeddings
    of its formatted prompt's tokens (tokenized as generation tokenizes it: no special tokens added).

    This is exactly the sequence `TapperModel.generate` feeds the transformer for that row (without the
    batch's left padding), so a causal LM generating greedily from it answers what the engine answers.
    `user_rows` (B, L*d) as in `TapperModel.build_prefix`: None takes the rows from the model's table."""
    if not examples:
        return []
    examples = list(examples)
    embedding = model.hf_model.get_input_embeddings()
    with torch.no_grad():
        prefix, _ = model.build_prefix(examples, user_rows)
        out = []
        for r, example in enumerate(examples):
            ids = model.tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
            tokens = embedding(torch.tensor(ids, dtype=torch.long, device=embedding.weight.device))
            if prefix is None:
                out.append(tokens)
            else:
                out.append(torch.cat([prefix[r].to(tokens.dtype), tokens]))
    return out


def pad_left(embeds: Sequence[torch.Tensor], pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch for `model.generate(inputs_embeds=..., attention_mask=...)` from per-request embeddings:
    left-padded with the pad token's embedding `pad` (d,), as tapper's own generation pads."""
    width = max(e.shape[0] for e in embeds)
    rows, masks = [], []
    for e in embeds:
        n = width - e.shape[0]
        rows.append(torch.cat([pad.to(e).expand(n, -1), e]))
        masks.append(torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(e.shape[0], dtype=torch.long)]))
    return torch.stack(rows), torch.stack(masks).to(rows[0].device)


# ---------------------------------------------------------------------------------------------- export

def merged_model(model: TapperModel) -> nn.Module:
    """The transformers model with the bridge merged in (the task LoRA already is, since loading merges it)."""
    if isinstance(model.lm, PeftModel):
        model.lm = model.lm.merge_and_unload()
    return model.hf_model


def export_run(run: str | Path, out: str | Path, dtype: str = "float32", device: str = "cpu",
               model: TapperModel | None = None) -> Path:
    """Write the run as a merged HF model folder + the prefix pieces; returns `out` (replaced atomically).

    `dtype` is the saved weights' type (bfloat16 for a GPU engine; float32 keeps them bit-equal to what
    `TapperEngine` runs on CPU). `model`: the run already loaded; it is left with its bridge merged and its
    transformer in `dtype`."""
    run, out = Path(run), Path(out)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if not (run / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{run} is not a tapper run: no {CONFIG_NAME}")
    model = model or TapperModel.from_pretrained(run, device=device)
    model.eval()
    hf = merged_model(model)
    tokenizer = model.tokenizer

    def build(tmp: Path) -> None:
        hf.to(DTYPES[dtype]).save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        pieces = tmp / PREFIX_DIR
        pieces.mkdir()
        shutil.copy2(run / CONFIG_NAME, pieces / CONFIG_NAME)
        shutil.copy2(run / QUERY_PREFIX_NAME, pieces / QUERY_PREFIX_NAME)
        if (run / USER_STATE_DIR).is_dir():
            shutil.copytree(run / USER_STATE_DIR, pieces / USER_STATE_DIR)
        info = prefix_info(model, run, dtype)
        (tmp / PREFIX_INFO_NAME).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    atomic_replace_dir(out, build)
    return out


def prefix_info(model: TapperModel, run: Path, dtype: str) -> dict[str, Any]:
    """The small description of an export that a serving process reads first."""
    from tapper.generate import line_stop_ids

    cfg = model.config
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "task": cfg.task,
        "backbone": model.backbone_name,
        "source_run": str(run.resolve()),
        "dtype": dtype,
        "merged": {"task_lora": (run / TASK_ADAPTER_DIR).is_dir(), "bridge": cfg.use_bridge},
        "hidden_size": model.hidden,
        "prefix_len": cfg.prefix_len if (cfg.use_user_state or cfg.use_query_prefix) else 0,
        "row_size": model.row_size,
        "prompt_embeds": "per request: [P ; input embeddings of the formatted prompt's tokens], shape "
                         "(prefix_len + prompt tokens, hidden_size); P = P_u + P_q (+ the shared anchor, if any); "
                         "the prompt is tokenized without added special tokens",
        "rows": {
            "table": f"{PREFIX_DIR}/{USER_STATE_DIR}" if (run / USER_STATE_DIR).is_dir() else None,
            "users_in_table": len(model.user_state),
            "cold_start": "a request without a row gets the mean row of the table (zeros when it is empty)",
            "served": "a service passes each user's row from its store (tapper serve's P_u rows)",
        },
        "query_prefix": {"weights": f"{PREFIX_DIR}/{QUERY_PREFIX_NAME}", "top_k": cfg.top_k,
                         "retriever": cfg.retriever, "uses_history": cfg.use_query_prefix},
        "generation": {
            "greedy": True,
            "max_new_tokens": model.task.max_new_tokens,
            "stop_token_ids": line_stop_ids(model.tokenizer),  # EOS and every token holding a newline
            "answers": list(model.task.labels) if cfg.constrain_answers and model.task.labels else None,
        },
    }


def read_prefix_info(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / PREFIX_INFO_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a tapper export: no {PREFIX_INFO_NAME} (run `tapper export`)")
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("format") != EXPORT_FORMAT or int(info.get("version", 0)) > EXPORT_VERSION:
        raise ValueError(f"{path}: format {info.get('format')!r} version {info.get('version')!r}; this code "
                         f"reads {EXPORT_FORMAT!r} up to version {EXPORT_VERSION}")
    return info


# ---------------------------------------------------------------------------------------------- serving side

class _EmbeddingOnly(nn.Module):
    """Stands in for the transformer where only its input embeddings are needed (P_q reads them)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.embed_tokens = nn.Embedding.from_pretrained(weight, freeze=True)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens


def load_input_embeddings(folder: str | Path) -> torch.Tensor:
    """The input embedding matrix of a saved HF model, read alone from its safetensors files (the
    transformer is never materialized: its module names come from a model built on the meta device)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(config)
    embedding = shell.get_input_embeddings()
    name = next(n for n, m in shell.named_modules() if m is embedding)
    key = f"{name}.weight"
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = [folder / json.loads(index.read_text())["weight_map"][key]]
    else:
        files = sorted(folder.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            if key in f.keys():
                return f.get_tensor(key)
    raise KeyError(f"{folder}: no tensor {key!r} in {', '.join(p.name for p in files)}")


class PromptEmbedder:
    """Turns requests into prompt embeddings for an engine that runs the exported model (e.g. vLLM).

    Holds the tokenizer, the input embedding table, P_q and the user table; builds each request's example
    as `TapperEngine` does (record selection, prompt format), so the two agree token for token."""

    def __init__(self, model: TapperModel, info: dict[str, Any] | None = None):
        from tapper.train import builder_for

        self.model = model.eval()
        self.info = info
        self.builder = builder_for(model, model.config)
        self.row_size = model.row_size

    @classmethod
    def from_export(cls, folder: str | Path, device: str = "cpu") -> PromptEmbedder:
        from transformers import AutoTokenizer

        folder = Path(folder)
        info = read_prefix_info(folder)
        pieces = folder / PREFIX_DIR
        config = TapperConfig.load(pieces / CONFIG_NAME)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        weight = load_input_embeddings(folder)
        backbone = Backbone(model=_EmbeddingOnly(weight).to(device), tokenizer=tokenizer, name=info["backbone"])
        # use_bridge=False: the bridge is merged into the exported weights; only the prefix parts are built.
        model = TapperModel(backbone, replace(config, use_bridge=False))
        model.config = config
        state = load_file(str(pieces / QUERY_PREFIX_NAME))
        anchor = state.pop(ANCHOR_KEY, None)
        if (anchor is None) != (model.prefix_anchor is None):
            raise ValueError(f"{pieces}: the config's anchor_text and {QUERY_PREFIX_NAME} disagree")
        if anchor is not None:
            model.prefix_anchor.data.copy_(anchor)
        model.query_prefix.load_state_dict(state)
        if (pieces / USER_STATE_DIR).is_dir():
            model.user_state = UserStateTable.from_pretrained(pieces / USER_STATE_DIR)
        model.to(device)
        if model.row_size != info["row_size"]:
            raise ValueError(f"{folder}: rows of {model.row_size} numbers, but {PREFIX_INFO_NAME} says "
                             f"{info['row_size']}")
        return cls(model, info)

    def table_row(self, user_id: str) -> torch.Tensor | None:
        """The user's row in the exported table, or None (a request without a row takes the cold start)."""
        table = self.model.user_state
        return table.rows([user_id])[0].detach().clone() if user_id in table else None

    def default_row(self) -> torch.Tensor:
        return self.model.user_state.mean_row().detach().clone()

    def examples(self, requests: Sequence[Any]) -> list[Example]:
        """`tapper.engine.GenerationRequest`s as the engine builds them (same selection, same prompt)."""
        return [self.builder.for_query(r.user_id, r.input, r.history, query_day=r.query_day, example_id=str(i))
                for i, r in enumerate(requests)]

    def embed(self, requests: Sequence[Any]) -> list[torch.Tensor]:
        """One (T_i, d) prompt-embeddings tensor per request; a request without `user_row` gets the mean row."""
        if not requests:
            return []
        default = self.default_row()
        rows = torch.stack([default if r.user_row is None else r.user_row.to(default) for r in requests])
        return request_embeddings(self.model, self.examples(requests), rows)
