"""Kept results: each method runs once and its result is kept on disk, tagged with what made it (the settings
it reads and the hash of the tapper source), so a killed comparison picks up where it stopped and a changed
setting or code change runs again what it touches."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from tapper.experiment import VariantResult
from tapper.io_utils import atomic_write_text
from tapper.prefix.model import TapperModel
from tapper.settings import source_hash

STAGE1_KEYS = ("backbone", "task_lora_r", "task_lora_alpha", "task_lora_dropout", "lora_targets", "max_input_tokens",
               "max_answer_tokens", "seed", "batch_size", "stage1_lr", "stage1_epochs", "stage1_max_examples",
               "stage1_history_pairs", "warmup_ratio", "weight_decay", "max_grad_norm", "dtype")

# Settings that only the user table, or only a prefix, reads: a method without them keeps its result when
# they change, so a sweep over user_lr or the prefix does not retrain the peers.
USER_STATE_KEYS = ("user_lr", "onboard_steps", "onboard_lr", "init_std", "user_rows_optimizer")
ONBOARD_KEYS = ("onboard_steps", "onboard_lr")  # read by the onboarding rows alone
PREFIX_KEYS = ("prefix_len", "top_k", "anchor_text", "use_time_decay", "use_order_decay", "max_record_tokens",
               "max_query_tokens")
WITHOUT_PREFIX = {"zero-shot", "task-lora", "nonpersonal", "rag", "pag", "oppu", "perpcs", "pplug"}
PAG_KEYS = ("pag_summarizer",)  # read by PAG alone
# TAP-PER's stage 2, read also by the same-budget control (its budget), OPPU (which starts from the control) and
# PPlug (its epochs): the methods below train nothing after stage 1 or train on their own recipe, so a sweep over
# stage 2 neither retrains them nor counts as a settings change between their seeds.
STAGE2_KEYS = ("stage2_lr", "stage2_epochs")
WITHOUT_STAGE2 = {"zero-shot", "task-lora", "rag", "pag", "perpcs"}

# Peers run with one of their options changed, each kept under its own key (and runs dir) beside the peer
# itself; a variant reads the settings its peer reads.
PEER_VARIANTS = {
    "rag-targets": ("rag", {"fine_tune_on_targets": True}),
    "pag-targets": ("pag", {"fine_tune_on_targets": True}),
}


def base_method(key: str) -> str:
    """The method a key runs: a peer variant's peer, else the key itself."""
    return PEER_VARIANTS[key][0] if key in PEER_VARIANTS else key

# Options added after results were kept: at these values they change nothing, so they are left out of the
# settings a fingerprint hashes. (The fingerprint also hashes the package source, so results kept before any
# code change are run again all the same.)
NEUTRAL_DEFAULTS = {"anchor_text": None, "constrain_answers": False, "pag_summarizer": None}


def fingerprint(settings: dict) -> str:
    """The tag of what made a kept result: its settings and the tapper source that ran them (every .py and
    .json of the package, tapper.settings.source_hash), so a code change is never mistaken for a match."""
    settings = {k: v for k, v in settings.items() if k not in NEUTRAL_DEFAULTS or v != NEUTRAL_DEFAULTS[k]}
    payload = {"settings": settings, "tapper_source": source_hash()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def method_settings(key: str, settings: dict) -> dict:
    """The settings that method `key` reads: what its kept result is tagged with, and records."""
    ignored = set() if key.startswith("onboard") else set(ONBOARD_KEYS)
    method = base_method(key)
    if method != "pag":
        ignored |= set(PAG_KEYS)
    if method in WITHOUT_PREFIX:
        ignored |= {*USER_STATE_KEYS, *PREFIX_KEYS}
    if method in WITHOUT_STAGE2:
        ignored |= set(STAGE2_KEYS)
    elif key == "no-pu":
        ignored |= set(USER_STATE_KEYS)
    return {k: v for k, v in settings.items() if k not in ignored}


def method_fingerprint(key: str, settings: dict) -> str:
    return fingerprint(method_settings(key, settings))


def _untag(kept: dict) -> str | None:
    """Strips a kept result down to its VariantResult fields; returns the tag it was kept with."""
    kept.pop("settings_read", None)
    return kept.pop("settings", None)


def _kept(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, or being written by another process: not a result to take
        return None


class Runner:
    """Runs each method once and keeps its result on disk (`<runs>/result_<key>.json`), tagged with the
    settings that made it: a result from other settings (another --set, another --rewrite-history) is run
    again, never reused. A method's tag covers only the settings it reads (see method_fingerprint); a result
    tagged with every setting of this very run is reused too (and re-tagged). `shared`: other work dirs (the
    other points of one settings sweep) whose kept results are taken, and copied here, when their method tag
    matches: a sweep over user_lr runs the control once, not once per rate."""

    def __init__(self, runs: Path, fresh: bool, settings: dict, shared: Sequence[Path] = (),
                 keep_models: Sequence[str] = ()):
        self.runs = Path(runs)
        self.fresh = fresh
        self.settings = settings
        self.shared = [Path(d) for d in shared if Path(d) != self.runs]
        # Trained models kept in memory after their result, for the keys a later step reads (TAP-PER's, for its
        # int8 scoring). Each holds its own copy of the backbone, so keeping every variant's grew a Gemma
        # comparison past 13 GB and the OOM killer ended it.
        self.keep_models = set(keep_models)
        self.models: dict[str, TapperModel | None] = {}
        self.reused: list[str] = []  # keys answered from disk in this process
        self.ran: list[str] = []  # keys run in this process
        self.runs.mkdir(parents=True, exist_ok=True)

    def get(self, key: str, make: Callable[[], VariantResult]) -> VariantResult:
        path = self.runs / f"result_{key}.json"
        tag = method_fingerprint(key, self.settings)
        # the settings themselves, beside their tag: readers (bench/seed_spread.py) can say what differs
        record = {"settings": tag, "settings_read": json.loads(json.dumps(method_settings(key, self.settings),
                                                                          default=str))}
        if path.exists() and not self.fresh:
            kept = json.loads(path.read_text(encoding="utf-8"))
            if _untag(kept) in (tag, fingerprint(self.settings)):
                print(f"[{key}] reusing {path}", flush=True)
                atomic_write_text(path, json.dumps({**kept, **record}, ensure_ascii=False) + "\n")
                self.reused.append(key)
                return VariantResult(**kept)
            print(f"[{key}] {path} was made with other settings: running again", flush=True)
        for other in [] if self.fresh else self.shared:
            kept = _kept(other / path.name)
            if kept is not None and _untag(kept) == tag:
                print(f"[{key}] reusing {other / path.name} (a sweep point whose settings it does not read)",
                      flush=True)
                atomic_write_text(path, json.dumps({**kept, **record}, ensure_ascii=False) + "\n")
                self.reused.append(key)
                return VariantResult(**kept)
        print(f"[{key}] running", flush=True)
        began = time.perf_counter()
        result = make()
        if key in self.keep_models:
            self.models[key] = result.model
        result.model = None  # the result is kept as numbers; the trained model only as long as it is needed
        kept = {k: v for k, v in asdict(result).items() if k != "model"}
        atomic_write_text(path, json.dumps({**kept, **record}, ensure_ascii=False) + "\n")
        self.ran.append(key)
        print(f"[{key}] {result.name}: {result.metrics} ({time.perf_counter() - began:.0f} s)", flush=True)
        return result
