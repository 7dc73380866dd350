"""GPU check: TAP-PER as served vs OPPU (peft mixed-adapter batch, and adapter per user) on a Llama-3-8B-shaped
model, at 32 and 128 users: generated tokens per second and peak GPU memory.

    # on a machine with a CUDA GPU (about 16 GiB of bf16 weights + activations; a few minutes)
    .venv/bin/python bench/gpu_check.py --device cuda
    # the CPU path the tests run (tiny shapes, byte tokenizer)
    .venv/bin/python bench/gpu_check.py --device cpu --shape tiny --tokenizer tiny --users 2,3 --new-tokens 2 \
        --out /tmp/gpu_check

The model is built from a Llama-3-8B-shaped config (32 layers, hidden 4096, 32 heads / 8 KV heads, MLP
14336, vocabulary 128,256) with random weights in --dtype (bf16) directly on --device: nothing is downloaded,
and throughput does not depend on the weights' values. Prompts are tokenized with --tokenizer (default: the
bundled SmolLM2 BPE tokenizer, whose ids all fall inside the 8B vocabulary; `tiny`: tapper's byte tokenizer).
Users and their histories come from tapper's built-in LaMP-3 sample (64 users, cycled under new ids beyond).

For each --users count N, every method answers the same N requests from N different users, each answer
exactly --new-tokens tokens long (min = max new tokens):

- TAP-PER as served: `TapperEngine.generate` on one batch, a prefix per row (P_u: a random row per user;
  P_q over the user's BM25 top-k records), the bridge LoRA merged into the weights at load;
- OPPU, mixed-adapter batch: `OppuBaseline.generate_mixed`, one batch with every user's LoRA (r=8 on q/v) in
  its own peft slot, routed per row; the slots are loaded by a first, untimed call (`slot setup s`);
- OPPU, adapter per user: `OppuBaseline.generate`, each user's adapter file loaded, then that user answered.

Each timing is the fastest of --repeats (adapter per user: --per-user-repeats) after one warm-up call;
CUDA is synchronized around it. Peak memory is torch.cuda.max_memory_allocated() during the timed call
(weights included; `resident` is what was allocated when it began). On CPU it is not measured.
Writes results/gpu_check.{json,md} (--out).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, Result, Table, ratio

from tapper.backbone import Backbone, load_backbone, tiny_byte_tokenizer
from tapper.baselines.oppu import OppuBaseline, OppuConfig
from tapper.data.records import Question
from tapper.data.sample import load_sample
from tapper.engine import GenerationRequest, TapperEngine
from tapper.prefix.model import TapperModel
from tapper.train import resolve_configs

TASK = "LaMP_3"
SHAPES: dict[str, dict[str, Any]] = {
    # Meta-Llama-3-8B's config.json, less the weights
    "llama3-8b": {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192,
                  "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
                  "tie_word_embeddings": False},
    # tapper's tiny test model
    "tiny": {"vocab_size": 0, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
             "tie_word_embeddings": True},
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def random_backbone(shape: str, tokenizer, device: str, dtype: torch.dtype, seed: int) -> Backbone:
    """A Llama of the given shape with random weights, made directly on `device` in `dtype`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    params = dict(SHAPES[shape])
    params["vocab_size"] = max(params["vocab_size"], len(tokenizer))
    config = LlamaConfig(**params, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return Backbone(model=model, tokenizer=tokenizer, name=f"random {shape} ({str(dtype).removeprefix('torch.')})")


def load_tokenizer(spec: str):
    if spec == "tiny":
        return tiny_byte_tokenizer()
    return load_backbone(spec).tokenizer  # the model is dropped; only its tokenizer is kept


def users(n: int) -> list[Question]:
    """n users from the built-in sample (its 64 cycled, each copy under its own id)."""
    pool = [q for split in load_sample().values() for q in split.questions]
    return [Question(id=f"user{i:04d}", input=pool[i % len(pool)].input, profile=pool[i % len(pool)].profile,
                     user_id=f"user{i:04d}") for i in range(n)]


class Clock:
    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def measure(self, fn: Callable[[], Any], repeats: int) -> tuple[float, float | None, float | None]:
        """(fastest seconds, peak bytes during the fastest call, bytes allocated when it began)."""
        best: tuple[float, float | None, float | None] = (float("inf"), None, None)
        for _ in range(repeats):
            resident = None
            if self.cuda:
                self.sync()
                torch.cuda.reset_peak_memory_stats()
                resident = torch.cuda.memory_allocated()
            began = time.perf_counter()
            fn()
            self.sync()
            seconds = time.perf_counter() - began
            peak = torch.cuda.max_memory_allocated() if self.cuda else None
            if seconds < best[0]:
                best = (seconds, peak, resident)
        return best


def set_length(hf_model, n: int) -> None:
    """Exactly n new tokens per answer: the stop tokens are suppressed until then."""
    hf_model.generation_config.min_new_tokens = n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    ap.add_argument("--tokenizer", default="default", help="default (SmolLM2's BPE) | tiny (bytes) | a model dir")
    ap.add_argument("--users", default="32,128", help="comma-separated batch sizes (distinct users)")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--per-user-repeats", type=int, default=1, help="OPPU adapter per user is slow; timed fewer times")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (torch.cuda.is_available() is False); "
                         "the CPU path is --device cpu --shape tiny --tokenizer tiny")
    counts = [int(x) for x in args.users.split(",")]
    n_tok = args.new_tokens
    dtype = DTYPES[args.dtype]
    clock = Clock(args.device)
    result = Result("gpu_check", f"TAP-PER vs OPPU on a {args.shape}-shaped model ({args.device}, {args.dtype}): "
                    "tokens/s and peak memory", {})

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    tokenizer = load_tokenizer(args.tokenizer)
    backbone = random_backbone(args.shape, tokenizer, args.device, dtype, args.seed)
    weights = sum(p.numel() * p.element_size() for p in backbone.model.parameters())
    log(f"{backbone.name}: {sum(p.numel() for p in backbone.model.parameters()) / 1e9:.2f} B parameters, "
        f"{weights / 2**30:.1f} GiB")
    people = users(max(counts))

    # -- TAP-PER as served: one engine, bridge merged, a prefix per row ------------------------------------
    tcfg, train_cfg = resolve_configs(TASK, {"backbone": backbone.name}, {"show_progress": False})
    torch.manual_seed(args.seed)
    engine = TapperEngine(TapperModel(backbone, tcfg), train_cfg)  # merges the bridge, as `tapper serve` does
    hf = engine.model.hf_model
    gen = torch.Generator().manual_seed(args.seed)
    rows = {q.user_id: torch.randn(engine.row_size, generator=gen) * tcfg.init_std for q in people}

    def tapper(qs: list[Question]) -> list[str]:
        reqs = [GenerationRequest(q.user_id, q.input, q.profile, rows[q.user_id]) for q in qs]
        return [r.raw for r in engine.generate(reqs, max_new_tokens=n_tok)]

    set_length(hf, n_tok)
    tapper(people[:2])  # warm-up: kernels, allocator, the stop-token table
    measured: dict[int, dict[str, Any]] = {n: {} for n in counts}
    for n in counts:
        seconds, peak, resident = clock.measure(lambda n=n: tapper(people[:n]), args.repeats)
        measured[n]["TAP-PER"] = {"seconds": seconds, "peak_bytes": peak, "resident_bytes": resident}
        log(f"TAP-PER, {n} users: {seconds:.2f} s, {n * n_tok / seconds:.1f} tokens/s")
    prompt_tokens = statistics.mean(
        len(tokenizer(e.prompt, add_special_tokens=False)["input_ids"])
        for e in (engine.builder.for_query(q.user_id, q.input, q.profile) for q in people[:16]))

    # -- OPPU on the same weights: a LoRA per user ---------------------------------------------------------
    with tempfile.TemporaryDirectory(prefix="tapper-gpu-check-") as work:
        oppu = OppuBaseline(Backbone(model=hf, tokenizer=tokenizer, name=backbone.name),
                            OppuConfig.for_task(TASK, show_progress=False), work)
        with torch.no_grad():
            for q in people:  # one adapter file per user (random values: the timing does not depend on them)
                for name, p in oppu.model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.01)
                oppu.save_user(q.user_id)
        examples = {q.user_id: oppu.builder.for_query(q.user_id, q.input, q.profile) for q in people}
        base = oppu.model.get_base_model()
        set_length(base, n_tok)

        def per_user(qs: list[Question]) -> list[str]:
            oppu.active = None  # every user's adapter comes from its file, as for a fresh batch
            return oppu.generate([examples[q.user_id] for q in qs], max_new_tokens=n_tok)

        def mixed(qs: list[Question]) -> list[str]:
            return oppu.generate_mixed([examples[q.user_id] for q in qs], max_new_tokens=n_tok)

        per_user(people[:1])  # warm-up
        for n in counts:
            setup, _, _ = clock.measure(lambda n=n: mixed(people[:n]), 1)  # loads the slots
            seconds, peak, resident = clock.measure(lambda n=n: mixed(people[:n]), args.repeats)
            measured[n]["OPPU mixed batch"] = {"seconds": seconds, "peak_bytes": peak, "resident_bytes": resident,
                                               "slot_setup_seconds": setup}
            log(f"OPPU mixed batch, {n} users: {seconds:.2f} s (slot setup {setup:.2f} s)")
            seconds, peak, resident = clock.measure(lambda n=n: per_user(people[:n]), args.per_user_repeats)
            measured[n]["OPPU adapter per user"] = {"seconds": seconds, "peak_bytes": peak,
                                                    "resident_bytes": resident}
            log(f"OPPU adapter per user, {n} users: {seconds:.2f} s")
        per_user_params = oppu.per_user_params

    for n in counts:
        for m in measured[n].values():
            m["tokens_per_second"] = n * n_tok / m["seconds"]
    gib = 2**30

    def mem(value: float | None) -> float | str:
        return "-" if value is None else value / gib

    methods = ["TAP-PER", "OPPU mixed batch", "OPPU adapter per user"]
    table_rows = []
    for n in counts:
        tap = measured[n]["TAP-PER"]["seconds"]
        for name in methods:
            m = measured[n][name]
            table_rows.append([name, n, m["seconds"], m["tokens_per_second"], ratio(m["seconds"], tap),
                               mem(m["peak_bytes"]), mem(m["resident_bytes"]), m.get("slot_setup_seconds", "-")])
    result.tables.append(Table(
        f"{n_tok} new tokens per answer, N requests from N different users ({backbone.name}, {args.device}; "
        f"fastest of {args.repeats}, adapter per user of {args.per_user_repeats})",
        ["method", "users", "seconds", "tokens / s", "time / TAP-PER's", "peak GiB", "resident GiB",
         "slot setup s"], table_rows))
    result.data.update({
        "device": args.device, "device_name": torch.cuda.get_device_name() if clock.cuda else None,
        "shape": args.shape, "model_config": SHAPES[args.shape], "dtype": args.dtype, "backbone": backbone.name,
        "weights_bytes": weights, "tokenizer": args.tokenizer, "new_tokens": n_tok,
        "prompt_tokens_mean": prompt_tokens, "prefix_len": tcfg.prefix_len, "row_size": engine.row_size,
        "oppu_per_user_params": per_user_params, "users": counts,
        "measured": {str(n): measured[n] for n in counts},
    })
    result.notes += [
        f"Weights: {weights / gib:.1f} GiB of random {args.dtype} numbers (throughput does not depend on the values). "
        f"Prompts: {prompt_tokens:.0f} tokens on average (+{tcfg.prefix_len} prefix positions for TAP-PER).",
        "TAP-PER's time includes the whole served path: BM25 record selection and P_q on the host, then one "
        "batched generate with a prefix per row.",
        f"OPPU's per-user LoRA has {per_user_params:,} numbers (peft keeps it in float32 beside the "
        f"{args.dtype} base); TAP-PER's per-user row has {engine.row_size:,}.",
        "Mixed batch: every user's adapter sits in its own slot for the timed calls (loaded once by the slot "
        "setup call); adapter per user: each call reads every user's file again, as a server without slots must.",
    ]
    if not clock.cuda:
        result.notes.append("Run on CPU: peak memory is not measured (only CUDA's allocator reports it).")
    result.write_and_print(args.out)


if __name__ == "__main__":
    main()
