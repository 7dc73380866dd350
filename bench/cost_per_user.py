"""Cost per user: parameters (shared + per user, 1 to 1,000,000 users) and bytes on disk, TAP-PER vs OPPU vs PER-PCS.

    .venv/bin/python bench/cost_per_user.py                 # default backbone (SmolLM2-135M), ~20-60 s
    .venv/bin/python bench/cost_per_user.py --backbone tiny --out /tmp/cost   # smoke check
    .venv/bin/python bench/cost_per_user.py --backbone gemma3-270m --name cost_per_user_gemma3-270m

Parameters. Every count is the numel() of real tensors of the methods' own modules built on the chosen backbone,
none is a formula typed in: the frozen backbone (the same for all three, shown apart); the stage-1 task LoRA
(tapper.lora.add_lora with the TapperConfig's task_lora_* settings, as tapper.train.train_task_lora builds it),
which every method starts from; TAP-PER's shared parts (a TapperModel's bridge LoRA, P_q and prefix anchor, if
any: its shared_parameters()) and its per-user row (the model's user table, per row); OPPU's shared start (the
task LoRA plus the same-budget non-personalized model's LoRA, a TapperModel under nonpersonal_config, which
tapper.baselines.common.nonpersonal_backbone merges in) and its per-user LoRA (the tensors of the file
OppuBaseline.save_user writes); PER-PCS's shared parts (the task LoRA plus, from the installed PieceMixLinear
layers, every sharer's pieces and gates) and its per-user mixing weights (the tensor of the file
PerPcsBaseline.save_user writes). Totals at N users are shared + N x per-user, with and without the backbone.

Bytes. Every byte count comes from files written by the methods' own save code for real users on the chosen
backbone: a TAP-PER user table (float32 and int8 rows) of 1 user and of --table-users users (the difference
gives the marginal bytes of one more user, ids included), one OPPU adapter file, and one PER-PCS selection
file (plus the sharers' adapter and gate files it shares, as PerPcsBaseline.save copies them). Footprints at
1,000 and 1,000,000 users are those measured per-user sizes times the count (plus PER-PCS's shared sharers);
for OPPU and PER-PCS that is exact (one file per user), for TAP-PER the 1,000-user table is also measured
directly.

Writes results/<name>.{json,md,png}, by default results/cost_per_user.*; --name keeps a second backbone's tables
beside the default's.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import RESULTS, Result, Table, ratio
from safetensors.torch import load_file, save_file
from torch import nn

from tapper.backbone import Backbone, load_backbone
from tapper.baselines.nonpersonal import nonpersonal_config
from tapper.baselines.oppu import USERS_DIR, OppuBaseline, OppuConfig, user_file_name
from tapper.baselines.perpcs import ANCHORS_DIR, ANCHORS_LIST, GATE_STAMP_KEY, PerPcsBaseline, PerPcsConfig
from tapper.experiment import copy_backbone
from tapper.lora import add_lora
from tapper.prefix.config import TapperConfig
from tapper.prefix.model import TapperModel
from tapper.prefix.user_state import UserStateTable
from tapper.train import resolve_configs

SCALES = (1_000, 1_000_000)  # of the bytes table
USER_COUNTS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)  # of the parameter table and plot
HEADLINE_USERS = 1_000
COLORS = {"TAP-PER": "#2a7", "OPPU": "#c55", "PER-PCS": "#68c"}


# -- parameters, counted on real modules --------------------------------------------------------------------

def numel(tensors) -> int:
    return sum(t.numel() for t in tensors)


def lora_numel(model: nn.Module) -> int:
    """The LoRA weights peft put into `model` (its trainable adapter)."""
    return numel(p for n, p in model.named_parameters() if "lora_" in n)


@dataclass
class MethodParams:
    """One method's trainable parameters: shared by all users (by part) and held per user."""

    method: str
    shared: dict[str, int]
    per_user: int
    per_user_what: str
    notes: list[str] = field(default_factory=list)

    @property
    def shared_total(self) -> int:
        return sum(self.shared.values())

    def total(self, n_users: int, backbone: int = 0) -> int:
        return backbone + self.shared_total + n_users * self.per_user


def task_lora_params(backbone: Backbone, tcfg: TapperConfig) -> int:
    """The stage-1 task LoRA, built as tapper.train.train_task_lora builds it (not trained: only its size)."""
    own = copy_backbone(backbone)
    peft_model = add_lora(own.model, tcfg.task_lora_r, tcfg.task_lora_alpha, tcfg.task_lora_dropout,
                          tcfg.lora_targets)
    n = lora_numel(peft_model)
    del own, peft_model
    gc.collect()
    return n


def tapper_params(backbone: Backbone, tcfg: TapperConfig, task_lora: int) -> MethodParams:
    """A TapperModel holding one user: its shared parts (bridge, P_q, anchor) and its user table's row."""
    model = TapperModel(copy_backbone(backbone), tcfg, user_ids=["user-0000000"])
    shared = {"task LoRA": task_lora, "bridge LoRA": lora_numel(model.lm),
              "P_q": numel(model.query_prefix.parameters())}
    if model.prefix_anchor is not None:
        shared["prefix anchor"] = model.prefix_anchor.numel()
    counted = sum(v for k, v in shared.items() if k != "task LoRA")
    if counted != numel(model.shared_parameters()):  # every part stage 2 trains is named above
        raise AssertionError(f"TAP-PER: parts {shared} do not add up to shared_parameters()")
    per_user = model.user_state.weight.numel() // len(model.user_state)
    del model
    gc.collect()
    return MethodParams("TAP-PER", shared, per_user, f"P_u row (L x d = {tcfg.prefix_len} x {backbone.hidden_size})")


def nonpersonal_lora_params(backbone: Backbone, tcfg: TapperConfig) -> int:
    """The same-budget non-personalized model's LoRA (the bridge of a TapperModel under nonpersonal_config):
    the LoRA that nonpersonal_backbone merges into the task-tuned model OPPU starts from."""
    model = TapperModel(copy_backbone(backbone), nonpersonal_config(tcfg))
    n = lora_numel(model.lm)
    del model
    gc.collect()
    return n


def crossover(a: MethodParams, b: MethodParams) -> dict | None:
    """Where the totals of a and b cross as N grows: the method with fewer parameters per user is the smaller
    one from `from_users` on (the first whole N past the exact crossing `at_users`); None when they never cross
    at N >= 1 (`smaller_always` then names the method smaller at every N >= 1, if either is)."""
    if a.per_user == b.per_user:
        if a.shared_total == b.shared_total:
            return None
        small = a if a.shared_total < b.shared_total else b
        return {"methods": [a.method, b.method], "at_users": None, "smaller_always": small.method}
    cheap, dear = (a, b) if a.per_user < b.per_user else (b, a)
    gap_shared = cheap.shared_total - dear.shared_total  # what `cheap` pays up front
    gap_user = dear.per_user - cheap.per_user  # what it saves per user
    at = gap_shared / gap_user
    if at < 1:
        return {"methods": [a.method, b.method], "at_users": at, "smaller_always": cheap.method}
    return {"methods": [a.method, b.method], "at_users": at, "smaller_before": dear.method,
            "smaller_from": cheap.method, "from_users": gap_shared // gap_user + 1}


def outgrows(m: MethodParams, backbone: int) -> dict:
    """The first N at which a method's trainable total (shared + N x per-user) exceeds the frozen backbone."""
    room = backbone - m.shared_total
    if room < 0:
        return {"method": m.method, "from_users": 1, "at_users": 0.0}
    return {"method": m.method, "from_users": room // m.per_user + 1, "at_users": room / m.per_user}


# -- bytes, from files the methods' save code writes ------------------------------------------------------------

def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tapper_table_bytes(row_size: int, n_users: int, int8: bool, where: Path) -> int:
    table = UserStateTable(row_size, [f"user-{i:07d}" for i in range(n_users)])
    folder = where / f"tapper_{'int8' if int8 else 'fp32'}_{n_users}"
    table.save_pretrained(folder, int8=int8)
    return dir_bytes(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="default")
    ap.add_argument("--task", default="LaMP_7", help="whose TAP-PER config (prefix length) to use")
    ap.add_argument("--table-users", type=int, default=1000, help="users in the measured multi-user table")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="cost_per_user", help="file stem of the results")
    args = ap.parse_args()
    result = Result(args.name, "Cost per user: parameters (shared + per user, 1 to 1,000,000 users) and "
                    "bytes on disk", {})

    backbone = load_backbone(args.backbone)
    tcfg, _ = resolve_configs(args.task, {"backbone": args.backbone})
    backbone_params = numel(backbone.model.parameters())  # tied weights once (parameters() deduplicates)
    n_layers = backbone.model.config.num_hidden_layers
    row_size = tcfg.prefix_len * backbone.hidden_size

    # Parameters of TAP-PER and of OPPU's shared start, each on its own copy of the backbone.
    task_lora = task_lora_params(backbone, tcfg)
    tap_params = tapper_params(backbone, tcfg, task_lora)
    nonpersonal_lora = nonpersonal_lora_params(backbone, tcfg)
    if tap_params.per_user != row_size:
        raise AssertionError(f"TAP-PER row of {tap_params.per_user} numbers, expected L*d = {row_size}")

    work = Path(tempfile.mkdtemp(prefix="tapper-cost-"))
    try:
        # TAP-PER: one row of prefix_len x d per user, in a table shared by all users.
        tap = {}
        for int8 in (False, True):
            one = tapper_table_bytes(row_size, 1, int8, work)
            many = tapper_table_bytes(row_size, args.table_users, int8, work)
            marginal = (many - one) / (args.table_users - 1)
            tap["int8" if int8 else "fp32"] = {"one_user_bytes": one, f"{args.table_users}_users_bytes": many,
                                               "marginal_bytes_per_user": marginal}

        # OPPU: one adapter file per user (r=8 on q and v), written by OPPU's own save path.
        oppu_cfg = OppuConfig.for_task(args.task, show_progress=False)
        oppu = OppuBaseline(copy_backbone(backbone), oppu_cfg, work / "oppu")
        with torch.no_grad():  # trained-looking weights (the size does not depend on the values)
            for n, p in oppu.model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.01)
        oppu_file = oppu.save_user("user-0000000")
        oppu_bytes = oppu_file.stat().st_size
        oppu_params = numel(load_file(str(oppu_file)).values())  # what one user's file holds
        if oppu_params != oppu.per_user_params:
            raise AssertionError(f"OPPU: file holds {oppu_params} numbers, the adapter {oppu.per_user_params}")
        del oppu
        gc.collect()

        # PER-PCS: sharers' pieces are OPPU adapters and their gates one vector per adapted projection (both
        # shared); a target user stores only its mixing weights. The shared bytes are what PerPcsBaseline.save
        # copies for the sharers: their adapter files, gate files and the list naming them.
        pcs_cfg = PerPcsConfig.for_task(args.task, show_progress=False)
        anchors_dir = work / "perpcs" / ANCHORS_DIR / USERS_DIR
        anchors_dir.mkdir(parents=True)
        anchor_ids = [f"anchor-{i}" for i in range(pcs_cfg.n_anchors)]
        for anchor in anchor_ids:
            shutil.copyfile(oppu_file, anchors_dir / user_file_name(anchor))
        (anchors_dir.parent / ANCHORS_LIST).write_text(json.dumps(anchor_ids))
        pcs = PerPcsBaseline(copy_backbone(backbone), pcs_cfg, work / "perpcs")
        pcs.install(anchor_ids)
        for i, anchor in enumerate(anchor_ids):  # gate files as PerPcsBaseline._gates_for writes them
            gates = {path: layer.gates[i].detach().cpu().contiguous() for path, layer in zip(pcs.paths, pcs.layers,
                                                                                         strict=True)}
            pcs.gate_file(anchor).parent.mkdir(parents=True, exist_ok=True)
            save_file(gates, str(pcs.gate_file(anchor)), metadata={GATE_STAMP_KEY: "0" * 16})
        pcs.user_mix["user-0000000"] = torch.softmax(torch.randn(pcs.bank.n_modules, pcs.bank.n_anchors), -1)
        pcs_file = pcs.save_user("user-0000000")
        pcs.save(work / "perpcs-saved")
        pcs_bytes = pcs_file.stat().st_size
        pcs_params = numel(load_file(str(pcs_file)).values())
        pcs_pieces = numel(t for m in pcs.layers for t in (m.lora_a, m.lora_b))
        pcs_gates = numel(m.gates for m in pcs.layers)
        anchor_bytes = dir_bytes(work / "perpcs-saved" / ANCHORS_DIR)
        n_modules = pcs.bank.n_modules
        del pcs
        gc.collect()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # -- parameters: shared + N x per user ------------------------------------------------------------------------
    n_sharers = pcs_cfg.n_anchors
    params = [
        tap_params,
        MethodParams("OPPU", {"task LoRA": task_lora, "non-personalized LoRA": nonpersonal_lora}, oppu_params,
                     f"LoRA r={oppu_cfg.r} on {', '.join(oppu_cfg.targets)}"),
        MethodParams("PER-PCS", {"task LoRA": task_lora, f"{n_sharers} sharers' pieces": pcs_pieces,
                                 f"{n_sharers} sharers' gates": pcs_gates}, pcs_params,
                     f"mixing weights ({n_modules} adapted projections x {n_sharers} sharers)"),
    ]
    by_name = {m.method: m for m in params}
    result.tables.append(Table(
        f"Parameters on {backbone.name}: shared (trainable) and per user",
        ["method", "shared parts", "what a user holds", "shared total", "per user", f"{HEADLINE_USERS:,} users",
         f"{HEADLINE_USERS:,} users + backbone"],
        [[m.method, " + ".join(f"{k} {v:,}" for k, v in m.shared.items()), m.per_user_what, m.shared_total,
          m.per_user, m.total(HEADLINE_USERS), m.total(HEADLINE_USERS, backbone_params)] for m in params]
        + [["frozen backbone (all three, not trained)", backbone.name, "-", backbone_params, 0, backbone_params,
            backbone_params]], align_left=3))
    result.tables.append(Table(
        "Total parameters at N users: shared + N x per user (without, then with the frozen backbone)",
        ["users", *[m.method for m in params], *[f"{m.method} + backbone" for m in params], "smallest"],
        [[n, *[m.total(n) for m in params], *[m.total(n, backbone_params) for m in params],
          min(params, key=lambda m, n=n: m.total(n)).method] for n in USER_COUNTS]))
    pairs = [(params[i], params[j]) for i in range(len(params)) for j in range(i + 1, len(params))]
    crossings = [c for a, b in pairs if (c := crossover(a, b)) is not None]
    over_backbone = [outgrows(m, backbone_params) for m in params]
    result.data["parameters"] = {
        "backbone": backbone_params,
        "methods": {m.method: {"shared": m.shared, "shared_total": m.shared_total, "per_user": m.per_user,
                               "per_user_what": m.per_user_what} for m in params},
        "totals": {str(n): {m.method: {"trainable": m.total(n), "with_backbone": m.total(n, backbone_params)}
                            for m in params} for n in USER_COUNTS},
        "crossovers": crossings,
        "trainable_exceeds_backbone": over_backbone,
    }

    # -- bytes per user (as before) ---------------------------------------------------------------------------------
    methods = [
        ("TAP-PER (fp32 row)", row_size, tap["fp32"]["one_user_bytes"], tap["fp32"]["marginal_bytes_per_user"], 0),
        ("TAP-PER (int8 row)", row_size, tap["int8"]["one_user_bytes"], tap["int8"]["marginal_bytes_per_user"], 0),
        ("OPPU (LoRA r=8 on q, v)", oppu_params, oppu_bytes, oppu_bytes, 0),
        (f"PER-PCS (mix of {pcs_cfg.n_anchors} sharers per adapted projection)", pcs_params, pcs_bytes,
         pcs_bytes, anchor_bytes),
    ]
    rows, data_methods = [], []
    for name, n_params, file_bytes, per_user, shared in methods:
        footprint = {n: shared + per_user * n for n in SCALES}
        rows.append([name, n_params, file_bytes, per_user, shared, footprint[1_000] / 1e6,
                     footprint[1_000_000] / 1e9, ratio(oppu_bytes, per_user)])
        data_methods.append({"method": name, "trainable_params_per_user": n_params, "one_user_file_bytes": file_bytes,
                             "bytes_per_user": per_user, "shared_bytes": shared,
                             "footprint_bytes": {str(n): v for n, v in footprint.items()},
                             "oppu_bytes_over_this": ratio(oppu_bytes, per_user)})
    result.tables.append(Table(
        f"Bytes per user on {backbone.name} (d={backbone.hidden_size}, {n_layers} layers, TAP-PER L="
        f"{tcfg.prefix_len})",
        ["method", "params / user", "one-user file(s), bytes", "bytes / user", "shared bytes",
         "1,000 users (MB)", "1,000,000 users (GB)", "OPPU bytes / this"], rows))
    result.data.update({"backbone": backbone.name, "hidden_size": backbone.hidden_size, "layers": n_layers,
                        "prefix_len": tcfg.prefix_len, "tapper_tables": tap, "methods": data_methods,
                        "perpcs_config": {"n_anchors": pcs_cfg.n_anchors, "top_k": pcs_cfg.top_k}})
    fp32_ratio = ratio(oppu_bytes, tap["fp32"]["marginal_bytes_per_user"])
    int8_ratio = ratio(oppu_bytes, tap["int8"]["marginal_bytes_per_user"])
    result.data["targets"] = {"oppu_over_tapper_fp32": fp32_ratio, "oppu_over_tapper_int8": int8_ratio,
                              "met_100x_fp32": fp32_ratio >= 100, "met_200x_int8": int8_ratio >= 200}

    result.notes += parameter_notes(params, by_name, crossings, over_backbone, backbone_params, backbone.name,
                                    n_sharers)
    result.notes += [
        f"Bytes per user: OPPU and PER-PCS store one file per user (its full size counts, safetensors header "
        f"included); TAP-PER's rows share one table, so its bytes per user are the measured growth of the table "
        f"from 1 to {args.table_users:,} users (row plus its id in users.json).",
        f"OPPU / TAP-PER bytes per user: {fp32_ratio:.1f}x with float32 rows (target >= 100x: "
        f"{'met' if fp32_ratio >= 100 else 'missed'}), {int8_ratio:.1f}x with int8 rows (target >= 200x: "
        f"{'met' if int8_ratio >= 200 else 'missed'}). In parameters: {oppu_params:,} / {row_size:,} = "
        f"{oppu_params / row_size:.0f}x, fixed by the shapes (r*(d_in+d_out) per adapted projection vs L*d).",
        f"PER-PCS stores less per target user than TAP-PER ({n_modules} adapted projections x "
        f"{pcs_cfg.n_anchors} float32 mixing weights), but needs its sharers' full adapters and gates on hand (shared "
        "bytes: the files PerPcsBaseline.save copies for them) and assembles a different adapter per user in every "
        "forward pass.",
    ]

    def plot(fig):
        fig.set_size_inches(12, 5)
        ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
        draw_growth(ax1, params, crossings, backbone_params, backbone.name)
        names = [m[0].split(" (")[0] + ("\n(int8)" if "int8" in m[0] else "") for m in methods]
        ax2.bar(names, [m[3] for m in methods], color=["#2a7", "#5c9", "#c55", "#68c"])
        ax2.set_yscale("log")
        ax2.set_ylabel("bytes stored per user (log)")
        ax2.set_title("Stored per user (files the methods write)")
        for i, m in enumerate(methods):
            ax2.annotate(f"{m[3]:,.0f} B", (i, m[3]), ha="center", va="bottom", fontsize=8)
        ax2.set_ylim(top=max(m[3] for m in methods) * 3)

    result.write_and_print(args.out, plot)


def parameter_notes(params: list[MethodParams], by_name: dict[str, MethodParams], crossings: list[dict],
                    over_backbone: list[dict], backbone_params: int, backbone_name: str, n_sharers: int) -> list[str]:
    n = HEADLINE_USERS
    totals = ", ".join(f"{m.method} {m.total(n):,} ({m.total(n) / 1e6:.2f} M; {m.total(n, backbone_params):,} "
                       f"with the backbone)" for m in params)
    ratios = ", ".join(f"{a.method} / {b.method} {a.total(n) / b.total(n):.2f}x "
                       f"({a.total(n, backbone_params) / b.total(n, backbone_params):.2f}x with the backbone)"
                       for a, b in ((by_name["OPPU"], by_name["TAP-PER"]), (by_name["TAP-PER"], by_name["PER-PCS"])))
    notes = [f"Total parameters at {n:,} users (shared + {n:,} x per user): {totals}; the frozen {backbone_name} "
             f"backbone, the same for all three, is {backbone_params:,}. Ratios: {ratios}."]
    said = []
    for c in crossings:
        a, b = c["methods"]
        if "smaller_always" in c:
            other = b if c["smaller_always"] == a else a
            why = ("fewer shared and fewer per-user parameters" if c["at_users"] is None or c["at_users"] <= 0
                   else f"the totals cross at N = {c['at_users']:.2f}, below one user")
            said.append(f"{c['smaller_always']} is smaller than {other} at every N >= 1 ({why})")
        else:
            said.append(f"{c['smaller_before']} is smaller than {c['smaller_from']} up to "
                        f"{c['from_users'] - 1:,} users, {c['smaller_from']} from {c['from_users']:,} on (the "
                        f"totals cross at N = {c['at_users']:.2f})")
    notes.append("Crossovers (the same with or without the backbone, which adds the same to all three): "
                 + "; ".join(said) + ".")
    notes.append("Trainable parameters outgrow the frozen backbone at: " + ", ".join(
        f"{o['method']} {o['from_users']:,} users" for o in over_backbone) + ".")
    tap = by_name["TAP-PER"]
    notes.append(f"TAP-PER's shared part is mostly P_q ({tap.shared['P_q']:,} of {tap.shared_total:,}: the "
                 "record scorer's MLP on 4d inputs and the d -> L*d projection); the bridge LoRA is "
                 f"{tap.shared['bridge LoRA']:,}.")
    pcs = by_name["PER-PCS"]
    per_sharer = sum(v for k, v in pcs.shared.items() if k != "task LoRA") // n_sharers
    per_user_per_sharer = pcs.per_user // n_sharers
    # PER-PCS at n users with s sharers: task LoRA + s * per_sharer + n * s * per_user_per_sharer.
    break_even = (tap.total(n) - pcs.shared["task LoRA"]) / (per_sharer + n * per_user_per_sharer)
    notes.append(f"PER-PCS's size follows its number of sharers ({n_sharers} here, PerPcsConfig.n_anchors): each "
                 f"sharer adds {per_sharer:,} shared parameters (its LoRA pieces and gates) and "
                 f"{per_user_per_sharer:,} per user. At {n:,} users, PER-PCS would match TAP-PER's total with "
                 f"{break_even:.1f} sharers. Its per-user weights are not trained: they are computed from gate "
                 "scores with forward passes only.")
    return notes


def draw_growth(ax, params: list[MethodParams], crossings: list[dict], backbone_params: int,
                backbone_name: str) -> None:
    """Log-log: total trainable parameters (shared + N x per user) against users, one line per method."""
    import numpy as np

    users = np.logspace(0, 6, 241)
    for m in params:
        ax.plot(users, m.shared_total + users * m.per_user, color=COLORS[m.method], lw=2,
                label=f"{m.method}: {m.shared_total / 1e6:.2f} M shared + {m.per_user:,} / user")
        ax.plot(USER_COUNTS, [m.total(n) for n in USER_COUNTS], "o", color=COLORS[m.method], ms=4)
    ax.axhline(backbone_params, color="#555", ls="--", lw=1.2)
    ax.text(1.2, backbone_params * 1.25, f"frozen backbone ({backbone_name}): {backbone_params / 1e6:.1f} M",
            fontsize=8, color="#333")
    by_name = {m.method: m for m in params}
    shown = sorted((c for c in crossings if c.get("smaller_from") is not None), key=lambda c: c["at_users"])
    lines = []
    for c in shown:
        x = c["at_users"]
        y = by_name[c["smaller_from"]].shared_total + x * by_name[c["smaller_from"]].per_user
        ax.plot([x], [y], "kx", ms=7, mew=1.5, zorder=5)
        lines.append(f"{c['smaller_from']} below {c['smaller_before']} from N = {c['from_users']:,} (cross at {x:.1f})")
    if lines:
        ax.text(0.98, 0.03, "x: totals cross\n" + "\n".join(lines), transform=ax.transAxes, ha="right", va="bottom",
                fontsize=8, bbox={"boxstyle": "round", "fc": "white", "ec": "#bbb"})
    ax.axvline(HEADLINE_USERS, color="#bbb", lw=0.8, ls=":")
    ax.text(HEADLINE_USERS * 1.15, 0.97, f"{HEADLINE_USERS:,} users", fontsize=7, color="#777", va="top",
            transform=ax.get_xaxis_transform())
    low = min(m.total(1) for m in params)
    ax.set_ylim(low / 8, max(m.total(USER_COUNTS[-1]) for m in params) * 4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1, 1e6)
    ax.set_xlabel("users N (log)")
    ax.set_ylabel("total trainable parameters, shared + N x per user (log)")
    ax.set_title("Parameters as users grow")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


if __name__ == "__main__":
    main()
