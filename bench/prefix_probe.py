"""Which part of a trained TAP-PER model's prefix moves its answers: inference-time ablations, no retraining.

    .venv/bin/python bench/prefix_probe.py --run /root/tapper-runs/LaMP_3_magazine/tapper \
        --task LaMP_3 --source magazine --users 100             # the targets bench/quality.py chose
    .venv/bin/python bench/prefix_probe.py --run runs/quality/.../tapper --task LaMP_7 --users 100
    .venv/bin/python bench/prefix_probe.py --run runs/quality/.../tapper --rows-only   # how far the rows moved

The trained ablations of bench/quality.py (TAP-PER without P_u, without P_q) retrain the model without the
part, so the bridge learns to do without it. This probe keeps one trained model and switches parts off at
inference: every user on the mean row, P_u zero (P_q alone), P_q off (P_u alone), and no prefix at all (the
bridge alone). If an answer changes, that part moved it. It also says how far the trained rows moved from their
N(0, init_std) start, since a row that never moved is noise, not a user.

Each variant is scored with LaMP's metric on the same targets (the ones bench/quality.py chose with the same
--task/--source/--users/--stage1-users/--min-profile/--seed; with --val-latest, on their latest history item, as a
val-latest run of bench/quality.py scored them) and paired against the model as trained (bootstrap
95% CI of the difference). --control names a result_*.json of bench/quality.py (e.g. the same-budget control's)
to pair against as well. Writes results/prefix_probe_<label>[_<tag>].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from common import RESULTS, Result, Table
from quality import OTHER_SOURCES, SOURCES, choose_users, run_label

from tapper.compare import hold_out_latest
from tapper.compare.report import paired_difference_ci
from tapper.data.records import LampSplit
from tapper.experiment import evaluate_model, primary_metric
from tapper.prefix.config import TapperConfig
from tapper.prefix.model import USER_STATE_DIR, TapperModel, load_run_config
from tapper.prefix.user_state import UserStateTable
from tapper.train import builder_for

AS_TRAINED = "as trained"


@dataclass
class ProbeRow:
    name: str
    score: float
    answers: dict[str, str]


def _variants(model: TapperModel, trained: torch.Tensor) -> list[tuple[str, Callable[[], None]]]:
    """(name, switch) pairs; each switch sets the model up from the trained state, which `probe` restores."""
    table = model.user_state.weight.data

    def mean_row() -> None:
        table.copy_(trained.mean(0, keepdim=True).expand_as(trained))

    def no_pu() -> None:
        table.zero_()

    def no_pq() -> None:
        model.config.use_query_prefix = False

    def no_prefix() -> None:
        model.config.use_user_state = model.config.use_query_prefix = False

    out = [(AS_TRAINED, lambda: None)]
    if model.config.use_user_state:
        out += [("every user on the mean row", mean_row)]
        if model.config.use_query_prefix:
            out += [("P_u zero (P_q alone)", no_pu), ("P_q off (P_u alone)", no_pq)]
    elif model.config.use_query_prefix:
        out += [("P_q off", no_pq)]
    return out + [("no prefix (the bridge alone)", no_prefix)]


def probe(model: TapperModel, target: LampSplit) -> list[ProbeRow]:
    """Score the model on `target` as trained and with each part of its prefix switched off."""
    metric = primary_metric(model.task.name)[0]
    table = model.user_state.weight.data
    trained, config = table.clone(), (model.config.use_user_state, model.config.use_query_prefix)
    rows = []
    for name, switch in _variants(model, trained):
        try:
            switch()
            result = evaluate_model(model, target, name, show_progress=False)
        finally:  # back to the trained state before the next switch, and on the way out
            table.copy_(trained)
            model.config.use_user_state, model.config.use_query_prefix = config
        rows.append(ProbeRow(name, float(result.metrics[metric]), dict(result.predictions)))
    return rows


def row_drift(model: TapperModel) -> dict[str, float]:
    """Mean per-token norm of the trained rows against what N(0, init_std) rows of that width have."""
    return _drift(model.user_state.weight, model.config)


def _drift(weight: torch.Tensor, cfg: TapperConfig) -> dict[str, float]:
    rows = weight.detach().float().view(weight.shape[0], cfg.prefix_len, -1)
    return {"rows": int(weight.shape[0]), "token_norm_mean": float(rows.norm(dim=-1).mean()) if len(rows) else 0.0,
            "token_norm_at_init": cfg.init_std * math.sqrt(rows.shape[-1])}


def rows_moved(run: Path) -> dict[str, float]:
    """row_drift of a saved run, read from its config and user table alone (no backbone)."""
    return _drift(UserStateTable.from_pretrained(run / USER_STATE_DIR).weight, load_run_config(run))


@torch.no_grad()
def prefix_scale(model: TapperModel, target: LampSplit, batch_size: int = 16) -> dict[str, float]:
    """Median per-token norms of what the backbone reads on the targets: its own word embeddings of the prompts,
    and the prefix parts (P_u rows, P_q, their sum). A prefix far below the word scale is barely read: Gemma
    scales its word embeddings by sqrt(d), SmolLM2 does not, and P_u starts at N(0, init_std) on both."""
    builder = builder_for(model, model.config)
    examples = [builder.for_question(q) for q in target.questions]
    emb = model.hf_model.get_input_embeddings()
    words, parts = [], {"P_u": [], "P_q": [], "P_u + P_q": []}
    for i in range(0, len(examples), batch_size):
        batch = examples[i:i + batch_size]
        for e in batch:
            ids = model.tokenizer(e.prompt, add_special_tokens=False, return_tensors="pt").input_ids.to(model.device)
            words.append(emb(ids)[0].float().norm(dim=-1))
        length, hidden = model.config.prefix_len, model.hidden
        if model.config.use_user_state:
            rows = model.user_state.rows([e.user_id for e in batch]).to(model.device)
            parts["P_u"].append(rows.view(len(batch), length, hidden).float().norm(dim=-1).flatten())
        if model.config.use_query_prefix:
            parts["P_q"].append(model._query_prefix(batch)[0].float().norm(dim=-1).flatten())
        fused = model.build_prefix(batch)[0]
        if fused is not None:
            parts["P_u + P_q"].append(fused.float().norm(dim=-1).flatten())
    out = {"word embeddings": float(torch.cat(words).median())}
    out.update({name: float(torch.cat(v).median()) for name, v in parts.items() if v})
    return out


def _targets(args: argparse.Namespace) -> LampSplit:
    target = choose_users(args.task, args.users, args.stage1_users, args.seed, args.min_profile, args.source)[0]
    return hold_out_latest(target) if args.val_latest else target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a trained TAP-PER folder (e.g. <runs>/tapper)")
    ap.add_argument("--task", choices=["LaMP_7", *SOURCES], help="required unless --rows-only")
    ap.add_argument("--source", choices=list(OTHER_SOURCES), default=None)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--stage1-users", type=int, default=300)
    ap.add_argument("--min-profile", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbone", default="default")
    ap.add_argument("--control", type=Path, default=None, help="a bench/quality.py result_*.json to pair against")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--val-latest", action="store_true",
                    help="score the targets on their latest history item, as bench/quality.py --val-latest did "
                         "(for a model from its val-latest-* dir); results go to prefix_probe_<label>_val_latest.*")
    ap.add_argument("--tag", default="", help="appended to the results' name: a run of other settings on the "
                    "same task keeps its own file")
    ap.add_argument("--rows-only", action="store_true", help="print how far the user rows moved, and stop")
    args = ap.parse_args()
    if args.rows_only:
        print(json.dumps({"run": str(args.run), **rows_moved(args.run)}))
        return
    if args.task is None:
        ap.error("--task is required (unless --rows-only)")
    if args.threads:
        torch.set_num_threads(args.threads)
    from tapper.backbone import load_backbone

    label = run_label(args.task, args.source, args.backbone) + ("_val_latest" if args.val_latest else "")
    label += f"_{args.tag}" if args.tag else ""
    target = _targets(args)
    model = TapperModel.from_pretrained(args.run, backbone=load_backbone(args.backbone))
    if model.task.name != target.task:
        raise SystemExit(f"{args.run}: a {model.task.name} model, but --task {args.task}")
    metric, higher = primary_metric(target.task)
    golds = {q.id: target.gold(q.id) for q in target.questions}
    rows = probe(model, target)
    control = None
    if args.control is not None:
        data = json.loads(args.control.read_text())
        control = (data["name"], data["predictions"])
    base = rows[0]

    def paired(a: dict[str, str], b: dict[str, str]) -> str:
        low, high = paired_difference_ci(target.task, metric, golds, a, b, args.seed)
        return f"[{low:+.3f}, {high:+.3f}]"

    columns = ["variant", metric, f"minus {AS_TRAINED}, paired 95% CI", "answers changed", "answer counts"]
    if control is not None:
        columns.insert(3, f"minus {control[0]}, paired 95% CI")
    body = []
    for r in rows:
        changed = sum(r.answers[q] != base.answers[q] for q in golds)
        counts = ", ".join(f"{a or '(empty)'}: {n}" for a, n in Counter(r.answers.values()).most_common(6))
        line = [r.name, round(r.score, 4), "" if r is base else paired(r.answers, base.answers), changed, counts]
        if control is not None:
            line.insert(3, paired(r.answers, control[1]))
        body.append(line)
    drift = row_drift(model)
    scale = prefix_scale(model, target)
    result = Result(f"prefix_probe_{label}", f"What moves a trained TAP-PER model's answers on {label}: its "
                    "prefix parts switched off at inference", {
                        "task": target.task, "label": label, "run": str(args.run), "users": len(golds),
                        "metric": metric, "higher_is_better": higher, "row_drift": drift, "prefix_scale": scale,
                        "control": None if control is None else {"name": control[0], "file": str(args.control)},
                        "variants": [{"name": r.name, metric: r.score, "answers": r.answers} for r in rows]})
    result.tables.append(Table(f"{label}: {len(golds)} target users, {metric} "
                               f"({'higher' if higher else 'lower'} is better)", columns, body))
    result.notes.append(
        f"User rows: {drift['rows']} rows, mean per-token norm {drift['token_norm_mean']:.3f} against "
        f"{drift['token_norm_at_init']:.3f} for the N(0, init_std) start.")
    result.notes.append("Median per-token norm of what the backbone reads: " + ", ".join(
        f"{name} {value:.2f}" for name, value in scale.items()) + ".")
    result.write_and_print(args.out)


if __name__ == "__main__":
    main()
