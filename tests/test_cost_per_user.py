"""bench/cost_per_user.py: the crossover arithmetic, and a tiny-backbone run whose parameter counts are checked
against the modules' shapes and whose totals and crossovers are checked against each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import cost_per_user  # noqa: E402  (a bench script: found through bench/ on sys.path)
from cost_per_user import MethodParams, crossover, outgrows  # noqa: E402

from tapper.backbone import load_backbone  # noqa: E402
from tapper.prefix.config import TapperConfig  # noqa: E402


def method(name: str, shared: int, per_user: int) -> MethodParams:
    return MethodParams(name, {"all": shared}, per_user, "-")


def test_crossover_names_who_is_smaller_on_each_side():
    big_shared = method("A", 100, 1)  # totals 100 + N vs 10 + 10 N: equal at N = 10
    big_per_user = method("B", 10, 10)
    c = crossover(big_shared, big_per_user)
    assert c["at_users"] == 10 and c["smaller_before"] == "B" and c["smaller_from"] == "A"
    assert c["from_users"] == 11  # equal at 10: A is strictly smaller from 11 on
    assert big_shared.total(10) == big_per_user.total(10) and big_shared.total(11) < big_per_user.total(11)
    c = crossover(method("A", 100, 1), method("B", 9, 10))  # cross at 91/9 = 10.1
    assert c["from_users"] == 11 and method("A", 100, 1).total(11) < method("B", 9, 10).total(11)
    assert method("A", 100, 1).total(10) > method("B", 9, 10).total(10)
    c = crossover(method("A", 5, 1), method("B", 10, 10))  # A is smaller in both: never cross
    assert c["smaller_always"] == "A" and "from_users" not in c
    assert crossover(method("A", 5, 3), method("B", 5, 3)) is None
    assert crossover(method("A", 5, 3), method("B", 6, 3))["smaller_always"] == "A"


def test_outgrows_is_the_first_n_past_the_backbone():
    m = method("A", 100, 10)
    o = outgrows(m, 1000)  # 100 + 90 * 10 = 1000: not past it yet
    assert o["from_users"] == 91 and m.total(91) > 1000 >= m.total(90)
    assert outgrows(method("A", 2000, 10), 1000)["from_users"] == 1


def lora_shapes(model: nn.Module, targets: list[str], r: int) -> int:
    """r * (in + out) over every projection named in targets: what a LoRA of rank r on them holds."""
    return sum(r * (m.in_features + m.out_features) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets)


def test_tiny_run_counts_real_modules_and_totals_add_up(tmp_path):
    res = subprocess.run([sys.executable, "bench/cost_per_user.py", "--backbone", "tiny", "--table-users", "20",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    data = json.loads((tmp_path / "cost_per_user.json").read_text())
    assert (tmp_path / "cost_per_user.png").stat().st_size > 0
    p = data["parameters"]

    # Counts against the shapes of the tiny model's projections (the script counts numel of built modules).
    hf = load_backbone("tiny").model
    assert p["backbone"] == sum(t.numel() for t in hf.parameters())
    cfg = TapperConfig()
    attention = ["q_proj", "k_proj", "v_proj", "o_proj"]
    task_lora = lora_shapes(hf, attention, cfg.task_lora_r)
    bridge = lora_shapes(hf, attention, cfg.bridge_r)
    qv = lora_shapes(hf, ["q_proj", "v_proj"], 8)
    tap, oppu, pcs = (p["methods"][k] for k in ("TAP-PER", "OPPU", "PER-PCS"))
    d, length = data["hidden_size"], data["prefix_len"]
    assert tap["per_user"] == length * d
    assert tap["shared"]["task LoRA"] == task_lora and tap["shared"]["bridge LoRA"] == bridge
    assert tap["shared"]["P_q"] == (4 * d * d + d) + (d + 1) + 2 + (d * length * d + length * d)
    assert oppu["shared"] == {"task LoRA": task_lora, "non-personalized LoRA": bridge}
    assert oppu["per_user"] == qv
    sharers = data["perpcs_config"]["n_anchors"]
    projections = 2 * data["layers"]  # q and v in every layer
    assert pcs["per_user"] == projections * sharers
    assert pcs["shared"]["task LoRA"] == task_lora
    assert pcs["shared"][f"{sharers} sharers' pieces"] == sharers * qv
    assert pcs["shared"][f"{sharers} sharers' gates"] == sharers * projections * d
    for m in p["methods"].values():
        assert m["shared_total"] == sum(m["shared"].values())

    # Totals are shared + N x per user (plus the backbone), and each crossover flips the order where it says.
    for n, row in p["totals"].items():
        for name, t in row.items():
            m = p["methods"][name]
            assert t["trainable"] == m["shared_total"] + int(n) * m["per_user"]
            assert t["with_backbone"] == t["trainable"] + p["backbone"]

    def total(name: str, n: int) -> int:
        return p["methods"][name]["shared_total"] + n * p["methods"][name]["per_user"]

    assert len(p["crossovers"]) == 3
    for c in p["crossovers"]:
        if "from_users" in c:
            n = c["from_users"]
            assert total(c["smaller_from"], n) < total(c["smaller_before"], n)
            assert total(c["smaller_from"], n - 1) >= total(c["smaller_before"], n - 1)
        else:
            other = next(x for x in c["methods"] if x != c["smaller_always"])
            assert all(total(c["smaller_always"], n) < total(other, n) for n in (1, 10**6))
    for o in p["trainable_exceeds_backbone"]:
        assert total(o["method"], o["from_users"]) > p["backbone"]
        assert o["from_users"] == 1 or total(o["method"], o["from_users"] - 1) <= p["backbone"]
    md = (tmp_path / "cost_per_user.md").read_text()
    assert "Total parameters at 1,000 users" in md and "Crossovers" in md
    assert cost_per_user.USER_COUNTS == (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)
