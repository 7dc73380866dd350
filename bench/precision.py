"""CPU speed by precision and batching, side by side in one run: fp32 vs bf16, with and without length buckets.

    nice -n 5 .venv/bin/python bench/precision.py                       # default backbone, LaMP-3 (Amazon Beauty)
    .venv/bin/python bench/precision.py --backbone tiny --train-steps 1 --rounds 1 --out /tmp/prec   # smoke check

1. Padding: the share of padding tokens in one epoch of stage-2 batches (batch 8) of real LaMP-3 and LaMP-7
   history pairs, in the old order (a seeded shuffle) and length-bucketed (tapper.train_loop.batch_order:
   sorted within windows of 50 batches, the batches then shuffled). Lengths are real token counts; the
   buckets are formed from them (tapper.train_loop.token_length), as training forms them; the column
   "bucketed by characters" is the earlier stand-in.
2. Training tokens/s of stage 2 (TAP-PER: P_u + P_q + bridge LoRA, frozen backbone) through the shared
   loop, every variant on the same examples and seeds, variants taking turns (rotating who goes first) in
   --rounds rounds of --train-steps steps each: real (non-padding) tokens per second. "fp32, before" is
   the loss as it was before this change (the head's input sliced from the first answer position as a
   view), to show what the index fix alone gives.
3. Generation tokens/s (greedy, batch --gen-batch, exactly --gen-tokens new tokens, bridge merged as
   served), fp32 vs bf16 weights.
4. Onboarding: seconds per step of fitting one P_u row (everything shared frozen), fp32 vs bf16.

Speed does not depend on the weights' values: an untrained run (tapper.train.init_run) is timed.
Writes results/speed_precision.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import RESULTS, SHARED_DATA, Result, Table, ratio

from tapper import batching
from tapper.backbone import load_backbone
from tapper.data.builders import build_lamp3_from_amazon
from tapper.data.lamp_io import read_split
from tapper.examples import PromptBudgetError
from tapper.experiment import copy_backbone
from tapper.precision import autocast, cast_frozen, cpu_has_bf16, set_threads
from tapper.prefix import model as prefix_model
from tapper.prefix.model import TapperModel
from tapper.train import builder_for, fit_user_row, history_examples, init_run, question_pairs, resolve_configs
from tapper.train_loop import LoopConfig, batch_order, example_lengths, padding_share, token_length, total_steps, train

BF16 = torch.bfloat16


def old_answer_loss(lm, tokenizer, prompts, answers, max_answer_tokens, prefix=None):
    """answer_loss as it was before this change: the head reads a view sliced from the batch's first answer
    position on (an int logits_to_keep), which makes matmul copy the head weight once per row."""
    batch = batching.encode_train(tokenizer, prompts, answers, max_answer_tokens)
    device = lm.get_input_embeddings().weight.device
    ids, mask, labels = (t.to(device) for t in (batch.input_ids, batch.attention_mask, batch.labels))
    embeds = lm.get_input_embeddings()(ids)
    embeds, mask, labels = batching.with_prefix(embeds, mask, prefix, labels)
    tokens = batch.tokens + (0 if prefix is None else prefix.shape[0] * prefix.shape[1])
    scored = (labels != batching.IGNORE).any(dim=0).nonzero()
    first = int(scored[0]) if len(scored) else labels.shape[1] - 1
    keep = labels.shape[1] - first + 1
    logits = lm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=keep).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                             labels[:, first:].reshape(-1), ignore_index=batching.IGNORE)
    return loss, tokens


def padding_rows(name: str, examples, tokenizer, batch_size: int, seed: int) -> dict:
    toks = example_lengths(examples, token_length(tokenizer))  # what encode_train builds: prompt + answer + eos
    chars = example_lengths(examples)
    cfg = LoopConfig(batch_size=batch_size, seed=seed, epochs=1.0)
    steps = total_steps(len(examples), cfg)
    plain = batch_order(len(examples), steps, LoopConfig(**{**cfg.__dict__, "bucket": False}))
    bucketed = batch_order(len(examples), steps, cfg, chars)
    by_tokens = batch_order(len(examples), steps, cfg, toks)
    return {"examples": name, "n": len(examples), "mean_tokens": statistics.mean(toks), "max_tokens": max(toks),
            "before": padding_share(plain, toks), "after": padding_share(by_tokens, toks),
            "after_character_lengths": padding_share(bucketed, toks)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="default")
    ap.add_argument("--users", type=int, default=24, help="LaMP-3 target users whose history pairs train")
    ap.add_argument("--train-steps", type=int, default=3, help="steps per variant and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gen-batch", type=int, default=16)
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--onboard-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: tapper.precision's auto)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    result = Result("speed_precision", "CPU speed: fp32 vs bf16, padding and length buckets (one run)", {})
    base = load_backbone(args.backbone)
    threads = set_threads(args.threads, base.model)
    task = "LaMP_3"
    tcfg, cfg = resolve_configs(task, {"backbone": args.backbone}, {"show_progress": False})
    splits = build_lamp3_from_amazon(SHARED_DATA / "amazon2018" / "All_Beauty_5.json", split="time", seed=0)
    target = splits["test"]
    target.questions = target.questions[: args.users]
    work = Path(tempfile.mkdtemp(prefix="tapper-precision-"))
    run = init_run(work / "run", backbone=args.backbone, task=task)
    model = TapperModel.from_pretrained(run, backbone=copy_backbone(base))
    model.user_state.add_users(sorted({q.user_id for q in target.questions}))
    builder = builder_for(model, model.config)
    examples = history_examples(builder, target, cfg.max_history_pairs)
    tok = model.tokenizer

    # -- 1. padding --------------------------------------------------------------------------------
    pad = [padding_rows(f"LaMP-3 stage 2 ({len(target.questions)} users)", examples, tok, cfg.batch_size, args.seed)]
    lamp7 = SHARED_DATA / "lamp7" / "dev_questions.json"
    if lamp7.exists():  # LaMP-7 questions with their golds, as stage 1 trains on them
        t7, c7 = resolve_configs("LaMP_7", {"backbone": args.backbone}, {})
        s7 = read_split(lamp7, lamp7.with_name("dev_outputs.json"), task="LaMP_7")
        try:
            ex7 = question_pairs(builder_for(base, replace(t7, top_k=0)), s7, args.users * 20)
            pad.append(padding_rows(f"LaMP-7 questions ({len(ex7)})", ex7, tok, c7.batch_size, args.seed))
        except PromptBudgetError as e:  # the tiny test backbone's byte tokenizer
            print(f"LaMP-7 skipped: {e}")
    for row in pad:
        print(f"padding {row['examples']}: {row['before']:.1%} -> {row['after']:.1%}", flush=True)
    result.tables.append(Table(
        f"Share of padding tokens in one epoch of batches of {cfg.batch_size} (token lengths; buckets formed from "
        "token lengths, as training does; last column: buckets formed from character lengths, the earlier "
        "stand-in)",
        ["examples", "pairs", "mean tokens", "max tokens", "padding, shuffled (before)", "padding, bucketed (after)",
         "bucketed by characters"],
        [[r["examples"], r["n"], r["mean_tokens"], r["max_tokens"], f"{r['before']:.1%}", f"{r['after']:.1%}",
          f"{r['after_character_lengths']:.1%}"] for r in pad]))

    # -- 2. training tokens/s --------------------------------------------------------------------------
    params = [model.user_state.weight, *model.shared_parameters()]
    model.user_state.weight.requires_grad_(True)
    lrs = {id(model.user_state.weight): cfg.user_lr}

    def loss_new(batch):
        return model.loss(batch)

    def autocast_only(batch):  # bf16 autocast over float32 weights (no weight held in bf16)
        with autocast(BF16):
            return model.loss(batch)

    def loss_old(batch):
        saved = prefix_model.answer_loss
        prefix_model.answer_loss = old_answer_loss
        try:
            return model.loss(batch)
        finally:
            prefix_model.answer_loss = saved

    variants = {  # name -> (loss_fn, dtype, bucket)
        "fp32, before (head input as a view)": (loss_old, "fp32", False),
        "fp32": (loss_new, "fp32", False),
        "fp32 + buckets": (loss_new, "fp32", True),
        "bf16 autocast, fp32 weights": (autocast_only, "fp32", False),
        "bf16": (loss_new, "bf16", False),
        "bf16 + buckets": (loss_new, "bf16", True),
    }
    names = list(variants)
    totals = {n: [0, 0.0] for n in names}

    def train_once(name: str, steps: int, seed: int):
        fn, dtype, bucket = variants[name]
        loop = LoopConfig(lr=cfg.stage2_lr, max_steps=steps, batch_size=cfg.batch_size, seed=seed, dtype=dtype,
                          bucket=bucket, show_progress=False)
        return train(model, examples, fn, loop, params=params, param_lrs=lrs, row_sparse=[model.user_state.weight],
                     length=token_length(model.tokenizer, model.config.max_answer_tokens))

    for name in names:  # warm-up: first-call costs are not throughput
        train_once(name, 1, 10_000)
    for r in range(args.rounds):
        turn = r % len(names)
        for name in names[turn:] + names[:turn]:
            res = train_once(name, args.train_steps, args.seed + r)
            totals[name][0] += res.tokens
            totals[name][1] += res.seconds
            print(f"train round {r + 1}: {name}: {res.tokens / res.seconds:.0f} tok/s", flush=True)
    tps = {n: t / s for n, (t, s) in totals.items()}
    ref = tps["fp32, before (head input as a view)"]
    result.tables.append(Table(
        f"Stage-2 training, real tokens / s (batch {cfg.batch_size}, {len(examples)} LaMP-3 history pairs; "
        f"{args.rounds} rounds x {args.train_steps} steps per variant, turns rotating)",
        ["variant", "tokens / s", "vs fp32 before", "vs fp32"],
        [[n, tps[n], ratio(tps[n], ref), ratio(tps[n], tps["fp32"])] for n in names]))

    # -- 3. generation ------------------------------------------------------------------------------
    gen_models = {}
    for name in ("fp32", "bf16"):
        m = TapperModel.from_pretrained(run, backbone=copy_backbone(base))
        if hasattr(m.lm, "merge_and_unload"):
            m.lm = m.lm.merge_and_unload()  # as served: the bridge merged (in float32) once
        m.eval()
        if name == "bf16":
            cast_frozen(m.hf_model, BF16)
        m.hf_model.generation_config.min_new_tokens = args.gen_tokens
        gen_models[name] = m
    qs = [builder.for_question(q) for q in target.questions[: args.gen_batch]]
    while len(qs) < args.gen_batch:
        qs += qs[: args.gen_batch - len(qs)]
    gen_time = {n: float("inf") for n in gen_models}
    outputs = {}
    for name, m in gen_models.items():  # warm-up
        with autocast(BF16 if name == "bf16" else torch.float32):
            m.generate(qs[:2], max_new_tokens=2)
    for r in range(args.rounds):
        for name in (list(gen_models) if r % 2 == 0 else list(gen_models)[::-1]):
            m = gen_models[name]
            began = time.perf_counter()
            with autocast(BF16 if name == "bf16" else torch.float32):
                outputs[name] = m.generate(qs, max_new_tokens=args.gen_tokens)
            gen_time[name] = min(gen_time[name], time.perf_counter() - began)
            print(f"generate round {r + 1}: {name}: {gen_time[name]:.2f} s", flush=True)
    n_new = {n: statistics.mean(len(tok(t, add_special_tokens=False)["input_ids"]) for t in o)
             for n, o in outputs.items()}
    gen_tps = {n: len(qs) * args.gen_tokens / t for n, t in gen_time.items()}
    same = sum(a == b for a, b in zip(outputs["fp32"], outputs["bf16"], strict=True))
    result.tables.append(Table(
        f"Generation (greedy, batch {len(qs)}, {args.gen_tokens} new tokens each, bridge merged; fastest of "
        f"{args.rounds})", ["weights", "seconds", "new tokens / s", "vs fp32", "answer tokens re-tokenized"],
        [[n, gen_time[n], gen_tps[n], ratio(gen_tps[n], gen_tps["fp32"]), n_new[n]] for n in gen_models]))

    # -- 4. onboarding ------------------------------------------------------------------------------
    user = target.questions[0]
    user_examples = builder.from_history(user.user_id, user.profile, cfg.max_history_pairs)
    on_time = {n: float("inf") for n in gen_models}
    for r in range(args.rounds + 1):
        for name in (list(gen_models) if r % 2 == 0 else list(gen_models)[::-1]):
            c = copy.copy(cfg)
            c.dtype = name
            steps = 1 if r == 0 else args.onboard_steps  # round 0 warms up
            began = time.perf_counter()
            fit_user_row(gen_models[name], user_examples, c, steps=steps)
            if r:
                on_time[name] = min(on_time[name], (time.perf_counter() - began) / steps)
    print(f"onboarding s/step: {on_time}", flush=True)
    result.tables.append(Table(
        f"Onboarding one user ({len(user_examples)} history pairs, batch {cfg.batch_size}): seconds per step "
        f"(fastest of {args.rounds} timings of {args.onboard_steps} steps)",
        ["weights", "s / step", "vs fp32"],
        [[n, on_time[n], ratio(on_time["fp32"], on_time[n])] for n in gen_models]))

    combined = ratio(tps["bf16 + buckets"], ref)
    result.data.update({
        "backbone": base.name, "threads": threads, "cpu_has_bf16": cpu_has_bf16(), "padding": pad,
        "train_tokens_per_second": tps, "train_totals": totals, "generation_seconds": gen_time,
        "generation_tokens_per_second": gen_tps, "generation_same_answers": same,
        "onboard_seconds_per_step": on_time, "combined_train_speedup": combined,
        "targets": {"train_2.5x_over_fp32": combined >= 2.5},
    })
    result.notes += [
        f"Training: bf16 + buckets runs {combined:.2f}x the tokens/s of fp32 as it was (goal >= 2.5x: "
        f"{'met' if combined >= 2.5 else 'missed'}); {ratio(tps['bf16 + buckets'], tps['fp32']):.2f}x today's fp32, "
        "which has the head fix too. bf16 holds the frozen backbone in bf16 for the run (restored to float32 "
        "after, bit for bit) and runs each step under autocast; every trained parameter and optimiser state "
        "stays float32. Autocast alone re-casts every frozen weight in every op of every step.",
        f"Generation: bf16 weights give {ratio(gen_tps['bf16'], gen_tps['fp32']):.2f}x fp32's tokens/s; "
        f"{same} of {len(qs)} greedy answers are identical to fp32's (untrained run).",
        f"Onboarding: {ratio(on_time['fp32'], on_time['bf16']):.2f}x faster per step in bf16.",
        f"Machine: {threads} torch thread(s); CPU bf16 support: {cpu_has_bf16()}. Other jobs shared the cores: "
        "ratios within one run, not absolute numbers, are what this measures.",
    ]

    def plot(fig):
        ax1, ax2 = fig.subplots(1, 2)
        ax1.barh(names[::-1], [tps[n] for n in names[::-1]], color="#2a7")
        ax1.set_xlabel("training tokens / s")
        ax1.tick_params(axis="y", labelsize=7)
        labels = [r["examples"].split(" (")[0] for r in pad]
        x = range(len(pad))
        ax2.bar([i - 0.2 for i in x], [r["before"] for r in pad], 0.4, label="shuffled", color="#c55")
        ax2.bar([i + 0.2 for i in x], [r["after"] for r in pad], 0.4, label="bucketed", color="#2a7")
        ax2.set_xticks(list(x), labels)
        ax2.set_title("share of padding tokens")
        ax2.legend()

    result.write_and_print(args.out, plot)


if __name__ == "__main__":
    main()
