"""Speed, side by side in one run (ratios, not absolute times): TAP-PER vs non-personalized vs RAG vs OPPU.

    .venv/bin/python bench/speed.py --threads 1           # default backbone, LaMP-7 dev users, ~11 min
    .venv/bin/python bench/speed.py --backbone tiny --latency-requests 3 --batch-users 4 --onboard-users 1 \
        --out /tmp/speed                                  # smoke check

1. Latency per request (batch 1, end to end: record selection, prompt, prefix, generation): TAP-PER
   (through TapperEngine, the serving path) vs the non-personalized backbone vs RAG (k=4). The methods
   take turns on every request (rotating who goes first) so that load on the machine hits all alike.
2. Throughput of --batch-users requests from as many different users, at each --throughput-tokens answer
   length: TAP-PER answers them in one batch; OPPU loads each user's adapter file and answers that user
   (one switch per user), and, as its strongest serving, in one batch with every user's adapter loaded into
   its own slot (peft's mixed-adapter batch, `adapter_names`). A plain non-personalized batch is timed
   beside them as the floor.
3. Onboarding a new user from their history: TAP-PER fits one P_u row (everything shared frozen); OPPU
   trains that user's LoRA; both with their default recipes on the same history pairs.

Every generation produces exactly --new-tokens tokens (min_new_tokens = max_new_tokens), so the ratios do
not depend on what the models happen to say. Speed does not depend on training, so without a trained
LaMP-7 run on this backbone (--run) an untrained one from tapper.train.init_run is used. Users come from
LaMP-7 dev (../shared/data/lamp7) for realistic lengths. Writes results/speed.{json,md,png}.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import RESULTS, SHARED_DATA, Result, Table, ratio

from tapper.backbone import load_backbone
from tapper.baselines.oppu import OppuBaseline, OppuConfig
from tapper.baselines.rag import RagBaseline, RagConfig
from tapper.data.lamp_io import read_split
from tapper.data.records import Question
from tapper.engine import GenerationRequest, TapperEngine
from tapper.examples import ExampleBuilder
from tapper.experiment import copy_backbone
from tapper.generate import generate_batch
from tapper.prefix.model import TASK_ADAPTER_DIR, TapperModel, merge_task_adapter
from tapper.train import init_run, resolve_configs

TASK = "LaMP_7"


def pick_users(n: int, min_history: int, seed: int) -> list[Question]:
    split = read_split(SHARED_DATA / "lamp7" / "dev_questions.json", task=TASK)
    pool = [q for q in split.questions if len(q.profile) >= min_history]
    random.Random(seed).shuffle(pool)
    if len(pool) < n:
        raise SystemExit(f"only {len(pool)} LaMP-7 dev users have >= {min_history} records; asked for {n}")
    return pool[:n]


def fixed_length(hf_model, n: int) -> None:
    """Make every generation exactly n tokens long: the stop tokens are suppressed until n."""
    hf_model.generation_config.min_new_tokens = n


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="default")
    ap.add_argument("--run", type=Path, default=None, help="a trained LaMP-7 run (default: an untrained one)")
    ap.add_argument("--latency-requests", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="timings per request and method; the fastest is kept")
    ap.add_argument("--batch-users", type=int, default=32)
    ap.add_argument("--onboard-users", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=16, help="answer length for latency")
    ap.add_argument("--throughput-tokens", default="4,16,40",
                    help="answer lengths for the mixed-user batch (LaMP-3 answers 2 tokens, LaMP-7 up to 40)")
    ap.add_argument("--onboard-measure-steps", type=int, default=3, help="steps timed per onboarding recipe")
    ap.add_argument("--k", type=int, default=4, help="RAG's records")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default); 1 gives steadier timings on a shared machine")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = Result("speed", "Speed: latency, mixed-user throughput, onboarding (side by side, one run)", {})
    torch.manual_seed(args.seed)
    n_tok = args.new_tokens

    base = load_backbone(args.backbone)
    work = Path(tempfile.mkdtemp(prefix="tapper-speed-"))
    run = args.run or init_run(work / "run", backbone=args.backbone, task=TASK)
    tuned = merge_task_adapter(copy_backbone(base), Path(run) / TASK_ADAPTER_DIR)
    _, train_cfg = resolve_configs(TASK, {"backbone": args.backbone}, {"show_progress": False})
    engine = TapperEngine(TapperModel.from_pretrained(run, backbone=copy_backbone(base)), train_cfg,
                          merge_bridge=False)
    merged = TapperEngine(TapperModel.from_pretrained(run, backbone=copy_backbone(base)), train_cfg)  # as served
    rag = RagBaseline(tuned, RagConfig.for_task(TASK, k=args.k, show_progress=False))
    plain_builder = ExampleBuilder(rag.task, tuned, 0, "bm25", rag.config.max_input_tokens)
    oppu = OppuBaseline(copy_backbone(tuned), OppuConfig.for_task(TASK, show_progress=False), work / "oppu")
    for hf in (engine.model.hf_model, merged.model.hf_model, tuned.model, oppu.model.get_base_model()):
        fixed_length(hf, n_tok)

    users = pick_users(max(args.latency_requests, args.batch_users, args.onboard_users),
                       train_cfg.max_history_pairs + 1, args.seed)
    rows = {q.user_id: engine.default_row() + 0.02 * torch.randn(engine.row_size) for q in users}

    def tapper_answer(qs: list[Question], serving: TapperEngine = engine, length: int = n_tok) -> list[str]:
        reqs = [GenerationRequest(q.user_id, q.input, q.profile, rows[q.user_id]) for q in qs]  # default: unmerged
        return [r.raw for r in serving.generate(reqs, max_new_tokens=length)]

    def plain_answer(qs: list[Question], length: int = n_tok) -> list[str]:
        examples = [plain_builder.for_query(q.user_id, q.input, q.profile) for q in qs]
        return generate_batch(tuned.model, tuned.tokenizer, [e.prompt for e in examples], None, length)

    def rag_answer(qs: list[Question]) -> list[str]:
        examples = [rag.request_example(q.user_id, q.input, q.profile) for q in qs]
        return generate_batch(tuned.model, tuned.tokenizer, [e.prompt for e in examples], None, n_tok)

    # -- 1. latency -------------------------------------------------------------------------------
    methods = {"non-personalized": plain_answer, f"RAG (k={args.k})": rag_answer,
               "TAP-PER": lambda qs: tapper_answer(qs, merged),  # as served: the shared bridge merged once
               "TAP-PER, bridge unmerged": tapper_answer}
    for fn in methods.values():  # warm-up: first-call costs (stop-token table, allocator) are not latency
        fn(users[:1])
    # Each request is timed --repeats times per method, turns rotating; the fastest time is kept, since other
    # load on the machine only ever adds time.
    latency: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for i, q in enumerate(users[: args.latency_requests]):
        best = {name: float("inf") for name in names}
        for rep in range(args.repeats):
            turn = (i + rep) % len(names)
            for name in names[turn:] + names[:turn]:
                best[name] = min(best[name], timed(lambda fn=methods[name], q=q: fn([q])))
        for name in names:
            latency[name].append(best[name])
        print(f"latency request {i + 1}/{args.latency_requests}: "
              + ", ".join(f"{n} {latency[n][-1]:.2f}s" for n in names), flush=True)
    prompt_tokens = {
        "non-personalized": statistics.mean(len(tuned.tokenizer(plain_builder.for_query(q.user_id, q.input, q.profile)
                                                                .prompt)["input_ids"]) for q in users[:8]),
        f"RAG (k={args.k})": statistics.mean(len(tuned.tokenizer(rag.request_example(q.user_id, q.input, q.profile)
                                                                 .prompt)["input_ids"]) for q in users[:8]),
        "TAP-PER": None,
    }
    prompt_tokens["TAP-PER"] = prompt_tokens["non-personalized"] + engine.model.config.prefix_len
    prompt_tokens["TAP-PER, bridge unmerged"] = prompt_tokens["TAP-PER"]
    med = {n: statistics.median(v) for n, v in latency.items()}
    np_med = med["non-personalized"]
    result.tables.append(Table(
        f"Latency per request (batch 1, {n_tok} new tokens; median over {args.latency_requests} requests of the "
        f"fastest of {args.repeats} timings)",
        ["method", "median s", "mean s", "ratio to non-personalized", "input length (tokens)"],
        [[n, med[n], statistics.mean(latency[n]), ratio(med[n], np_med), round(prompt_tokens[n], 1)]
         for n in names]))

    # -- 2. mixed-user throughput, at several answer lengths -----------------------------------------
    # Batching pays off in the decode steps (one pass over the weights serves every row), not in the prompt
    # pass (the same FLOPs either way), so the speed-up grows with the answer length: measured per length.
    batch = users[: args.batch_users]
    for q in batch:  # one adapter file per user, as OPPU stores them (values do not change the timing)
        with torch.no_grad():
            for n, p in oppu.model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.01)
        oppu.save_user(q.user_id)
    oppu_examples = [oppu.builder.for_query(q.user_id, q.input, q.profile) for q in batch]
    nb = len(batch)
    tokenizer = tuned.tokenizer

    def answer_tokens(texts: list[str]) -> float:
        """Mean new tokens per answer, re-tokenized: a check that every method generated the same length."""
        return statistics.mean(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)

    out: dict[str, list[str]] = {}  # each method's last answers, for the length check

    def run(name: str, fn: Callable[[], list[str]]) -> float:
        began = time.perf_counter()
        out[name] = fn()
        return time.perf_counter() - began

    throughput = []
    for length in [int(x) for x in args.throughput_tokens.split(",")]:
        for hf in (merged.model.hf_model, tuned.model, oppu.model.get_base_model()):
            fixed_length(hf, length)
        out.clear()

        def oppu_answer(length: int = length) -> list[str]:
            oppu.active = None  # every user's adapter comes from disk, as for a fresh mixed batch
            return oppu.generate(oppu_examples, max_new_tokens=length)

        switches_before = oppu.switches
        t_oppu = min(run("OPPU", oppu_answer) for _ in range(args.repeats))
        switches = (oppu.switches - switches_before) // args.repeats
        t_mixed = min(run("OPPU mixed", lambda length=length: oppu.generate_mixed(oppu_examples, length))
                      for _ in range(args.repeats))
        t_tap = min(run("TAP-PER", lambda length=length: tapper_answer(batch, merged, length))
                    for _ in range(args.repeats))
        t_plain = min(run("plain", lambda length=length: plain_answer(batch, length)) for _ in range(args.repeats))
        row = {"new_tokens": length, "tapper_seconds": t_tap, "oppu_seconds": t_oppu, "nonpersonal_seconds": t_plain,
               "oppu_mixed_seconds": t_mixed, "oppu_switches": switches, "oppu_over_tapper": ratio(t_oppu, t_tap),
               "oppu_mixed_over_tapper": ratio(t_mixed, t_tap),
               "measured_tokens": {k: answer_tokens(v) for k, v in out.items()}}
        throughput.append(row)
        print(f"throughput, {length} new tokens: TAP-PER {t_tap:.1f}s, OPPU {t_oppu:.1f}s "
              f"({row['oppu_over_tapper']:.1f}x), OPPU mixed batch {t_mixed:.1f}s "
              f"({row['oppu_mixed_over_tapper']:.1f}x), plain {t_plain:.1f}s; tokens {row['measured_tokens']}",
              flush=True)
    result.tables.append(Table(
        f"Throughput: {nb} requests from {nb} different users (fastest of {args.repeats}). TAP-PER: one batch, one "
        f"prefix per row, bridge merged (as served). OPPU: adapter per user loaded from disk, batch 1 each; "
        "OPPU mixed: the same files loaded into one slot each, one batch routed per row (peft adapter_names). "
        "Non-personalized: one batch (the floor)",
        ["new tokens", "TAP-PER s", "OPPU s", "OPPU mixed s", "non-personalized s", "OPPU / TAP-PER",
         "OPPU mixed / TAP-PER", "non-personalized / TAP-PER",
         "answer length re-tokenized (TAP-PER, OPPU, OPPU mixed)"],
        [[r["new_tokens"], r["tapper_seconds"], r["oppu_seconds"], r["oppu_mixed_seconds"], r["nonpersonal_seconds"],
          r["oppu_over_tapper"], r["oppu_mixed_over_tapper"], ratio(r["nonpersonal_seconds"], r["tapper_seconds"]),
          ", ".join(f"{r['measured_tokens'][k]:.1f}" for k in ("TAP-PER", "OPPU", "OPPU mixed"))]
         for r in throughput]))

    # -- 3. onboarding ----------------------------------------------------------------------------------
    # Both recipes are timed per optimisation step (a few steps each, turns alternating, fastest of
    # --repeats); a recipe's time is its step count times that. Running both recipes in full would take
    # most of the time budget on this machine; bench/quality.py times full onboardings of real users.
    m = args.onboard_measure_steps
    per_step = {"TAP-PER": float("inf"), "OPPU": float("inf")}
    onboard = []
    for q in users[: args.onboard_users]:
        pairs = oppu.history_pairs(q.user_id, q.profile)
        for rep in range(args.repeats):
            runs = [("TAP-PER", lambda q=q: engine.fit_user_row(q.profile, steps=m)),
                    ("OPPU", lambda q=q, pairs=pairs: oppu.train_user(q.user_id, pairs, max_steps=m))]
            for name, fn in runs[rep % 2:] + runs[: rep % 2]:
                per_step[name] = min(per_step[name], timed(fn) / m)
        onboard.append({"user": q.user_id, "pairs": len(pairs), "tapper_steps": train_cfg.onboard_steps,
                        "oppu_steps": oppu.recipe_steps(len(pairs))})
        print(f"onboard {q.user_id}: s/step TAP-PER {per_step['TAP-PER']:.2f}, OPPU {per_step['OPPU']:.2f}",
              flush=True)
    tap_steps = statistics.mean(o["tapper_steps"] for o in onboard)
    oppu_steps = statistics.mean(o["oppu_steps"] for o in onboard)
    tap_on, oppu_on = tap_steps * per_step["TAP-PER"], oppu_steps * per_step["OPPU"]
    result.tables.append(Table(
        f"Onboarding a new user ({statistics.mean(o['pairs'] for o in onboard):.0f} history pairs, batch "
        f"{train_cfg.batch_size}; s / step: fastest of {args.repeats} timings of {m} steps)",
        ["method", "what is trained", "recipe steps", "s / step", "recipe seconds", "OPPU time / this"],
        [["TAP-PER, new user without a fit", "nothing: the mean row + P_q from the history", 0, 0.0, 0.0, "-"],
         ["TAP-PER", f"one P_u row ({engine.row_size:,} numbers)", tap_steps, per_step["TAP-PER"], tap_on,
          ratio(oppu_on, tap_on)],
         ["OPPU", f"one LoRA ({oppu.per_user_params:,} numbers)", oppu_steps, per_step["OPPU"], oppu_on, 1.0]],
        align_left=2))

    lat_ratio = ratio(med["TAP-PER"], np_med)
    unmerged_ratio = ratio(med["TAP-PER, bridge unmerged"], np_med)
    rag_ratio = ratio(med[f"RAG (k={args.k})"], np_med)
    at_latency_length = min(throughput, key=lambda r: abs(r["new_tokens"] - n_tok))
    thr_ratio = at_latency_length["oppu_over_tapper"]
    thr_met = [r["new_tokens"] for r in throughput if r["oppu_over_tapper"] >= 10]
    on_ratio = ratio(oppu_on, tap_on)
    result.data.update({
        "backbone": base.name, "run": str(args.run) if args.run else "untrained (tapper.train.init_run)",
        "new_tokens": n_tok, "users": [q.user_id for q in users],
        "latency_seconds": latency, "latency_median": med, "prompt_tokens": prompt_tokens,
        "throughput": {"requests": nb, "by_answer_length": throughput},
        "onboarding": {"users": onboard, "seconds_per_step": per_step, "measured_steps": m},
        "onboard_config": {"tapper_steps": tap_steps, "tapper_lr": train_cfg.onboard_lr,
                                                  "oppu_epochs": oppu.config.epochs, "oppu_lr": oppu.config.lr},
        "ratios": {"tapper_latency_over_nonpersonal": lat_ratio, "rag_latency_over_nonpersonal": rag_ratio,
                   "unmerged_bridge_latency_over_nonpersonal": unmerged_ratio,
                   "oppu_over_tapper_batch_time": thr_ratio,
                   "oppu_mixed_over_tapper_batch_time": at_latency_length["oppu_mixed_over_tapper"],
                   "oppu_over_tapper_onboarding_time": on_ratio},
        "targets": {"latency_within_1.10x": lat_ratio <= 1.10,
                    "throughput_10x_oppu": {r["new_tokens"]: r["oppu_over_tapper"] >= 10 for r in throughput},
                    "onboarding_5x_faster": on_ratio >= 5},
    })
    result.notes += [
        f"Latency: TAP-PER as served (its bridge LoRA, shared by all users, merged into the weights once at "
        f"load) / non-personalized = {lat_ratio:.2f}x (target <= 1.10x: {'met' if lat_ratio <= 1.10 else 'missed'}); "
        f"RAG (k={args.k}) / non-personalized = {rag_ratio:.2f}x; TAP-PER with the bridge left as an adapter: "
        f"{unmerged_ratio:.2f}x. What remains of TAP-PER's overhead is record selection (BM25 top-k), P_q, and "
        "the prefix tokens in the prompt.",
        "Mixed-user batch: OPPU's time / TAP-PER's, by answer length: "
        + ", ".join(f"{r['new_tokens']} tokens {r['oppu_over_tapper']:.1f}x" for r in throughput)
        + (f" (target >= 10x: met at {', '.join(map(str, thr_met))} tokens, missed below)." if thr_met
           else " (target >= 10x: missed at every length).")
        + " The prompt pass costs the same FLOPs batched or not; the batch wins in the decode steps, where one "
        "pass over the weights serves all the rows instead of one. Every method is held to the same answer length "
        "(min = max new tokens); the last column re-tokenizes the answers as a check.",
        "OPPU served as one mixed batch (every user's LoRA in its own slot, routed per row by peft): its time / "
        "TAP-PER's is " + ", ".join(f"{r['new_tokens']} tokens {r['oppu_mixed_over_tapper']:.2f}x" for r in throughput)
        + ". This is the fair serving comparison for throughput: batching is open to OPPU too, at the price of "
        "a slot per distinct user in the batch and a small LoRA product per user in every layer.",
        f"Onboarding: OPPU takes {on_ratio:.2f}x TAP-PER's time (target >= 5x faster: "
        f"{'met' if on_ratio >= 5 else 'missed'}): {tap_steps:.0f} vs {oppu_steps:.0f} steps at "
        f"{per_step['TAP-PER']:.2f} vs {per_step['OPPU']:.2f} s / step. Both recipes back-propagate through the "
        "whole frozen LLM, so a step costs about the same and the ratio is mostly the ratio of steps. A new "
        "user is also served at once without any fit (the mean row + P_q from their history: no training "
        "step). The quality each path reaches is measured by bench/quality.py (its onboarding table), not here.",
        "Speed does not depend on the weights' values: an untrained run and random adapters time the same "
        "computation as trained ones.",
    ]

    def plot(fig):
        ax1, ax2, ax3 = fig.subplots(1, 3)
        labels = [n.replace("non-", "non-\n").replace(" (", "\n(").replace(", ", "\n") for n in names]
        ax1.bar(labels, [med[n] for n in names], color=["#888", "#c95", "#2a7", "#5c9"])
        ax1.set_title("latency / request (s)")
        ax1.tick_params(axis="x", labelsize=7)
        lengths = [r["new_tokens"] for r in throughput]
        ax2.plot(lengths, [r["oppu_over_tapper"] for r in throughput], "o-", color="#2a7", label="adapter per user")
        ax2.plot(lengths, [r["oppu_mixed_over_tapper"] for r in throughput], "s-", color="#68c",
                 label="mixed batch (peft)")
        ax2.legend(fontsize=7)
        ax2.axhline(10, color="#c55", linestyle="--", linewidth=1)
        ax2.set_xlabel("new tokens per answer")
        ax2.set_title(f"OPPU time / TAP-PER time\n({nb} users, one batch)")
        ax3.bar(["TAP-PER\nP_u fit", "OPPU\nLoRA"], [tap_on, oppu_on], color=["#2a7", "#c55"])
        ax3.set_title("onboarding one user (s)")

    result.write_and_print(args.out, plot)


if __name__ == "__main__":
    main()
