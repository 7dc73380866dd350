"""`tapper compare`: every method (floors, zero-shot, task LoRA, the same-budget non-personalized LoRA,
TAP-PER and its ablations, RAG, PAG (each also fine-tuned on the targets' history pairs), OPPU, PER-PCS, PPlug,
onboarding) on one task, same users, backbone, settings and metric, with 95% bootstrap intervals and paired
differences; resumable (kept results).

    spec = CompareSpec("LaMP_3", target=..., others=..., methods=parse_methods("floors,tapper"))
    report = run_comparison(spec, Path("runs/compare"))
    report.write(Path("results"))        # quality_LaMP_3.json / .md / .png
"""

from tapper.compare.harness import (
    ABLATIONS,
    CORE,
    METHOD_HELP,
    PEER_VARIANTS,
    CompareSpec,
    HoldOutError,
    NothingToTrain,
    hold_out_latest,
    onboard_held_out,
    onboard_key,
    parse_methods,
    run_comparison,
)
from tapper.compare.report import COLD, ONBOARDED, Report, Table, is_new_user_result, onboarded_name
from tapper.compare.runner import Runner, fingerprint, method_fingerprint

__all__ = [
    "ABLATIONS", "COLD", "CORE", "METHOD_HELP", "ONBOARDED", "PEER_VARIANTS", "CompareSpec", "HoldOutError",
    "NothingToTrain", "Report", "Runner", "Table", "fingerprint", "hold_out_latest", "is_new_user_result",
    "method_fingerprint", "onboard_held_out", "onboard_key", "onboarded_name", "parse_methods", "run_comparison",
]
