"""Does a soft prefix placed before the prompt's first token stop the frozen backbone from reading the prompt?

    .venv/bin/python bench/prefix_position.py --task LaMP_3 --users 69 --backbone gemma3-270m --threads 1

TAP-PER prepends its prefix to the prompt's embeddings, so on a backbone whose prompts start with `<bos>` (Gemma)
the prefix comes before `<bos>`, where the model never saw anything in pretraining. This feeds the frozen backbone
(no task LoRA, no bridge) each target question's prompt, exactly as TAP-PER builds it, three ways: without a
prefix; with L random vectors before the first token; with the same vectors right after it. Each vector has
--scale times the median norm of the backbone's own word embeddings (P_q sits at about that scale, see
bench/prefix_probe.py). Reported per way: the mean negative log-likelihood of the prompt's tokens (from the
third on: the first two are the template's) and of the gold answer, and the paired difference to no prefix
with a bootstrap 95% CI over questions. Writes results/prefix_position_<label>.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, Result, Table
from quality import OTHER_SOURCES, SOURCES, choose_users, run_label

from tapper.compare.report import mean_difference_ci
from tapper.prefix.config import TapperConfig
from tapper.train import builder_for, resolve_configs

WAYS = ("no prefix", "prefix before the first token", "prefix after the first token")


@torch.no_grad()
def nll_by_way(model, prompt_ids: list[int], answer_ids: list[int], prefix: torch.Tensor) -> dict[str, tuple]:
    """{way: (mean NLL of prompt tokens 3.., mean NLL of answer tokens)} for one question."""
    emb = model.get_input_embeddings()
    ids = torch.tensor([prompt_ids + answer_ids], device=prefix.device)
    tokens = emb(ids)
    n_prompt, length = len(prompt_ids), prefix.shape[0]
    out = {}
    for way in WAYS:
        if way == WAYS[0]:
            x, shift = tokens, lambda j: j
        elif way == WAYS[1]:
            x, shift = torch.cat([prefix[None], tokens], 1), lambda j: j + length
        else:
            x, shift = torch.cat([tokens[:, :1], prefix[None], tokens[:, 1:]], 1), lambda j: j + length * (j >= 1)
        logp = torch.log_softmax(model(inputs_embeds=x.to(tokens.dtype)).logits[0].float(), dim=-1)
        nll = [-float(logp[shift(j) - 1, ids[0, j]]) for j in range(2, ids.shape[1])]
        out[way] = (float(np.mean(nll[:n_prompt - 2])), float(np.mean(nll[n_prompt - 2:])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, choices=["LaMP_7", *SOURCES])
    ap.add_argument("--source", choices=list(OTHER_SOURCES), default=None)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--stage1-users", type=int, default=300)
    ap.add_argument("--min-profile", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="the user choice's seed, and the random prefix's")
    ap.add_argument("--backbone", default="default")
    ap.add_argument("--prefix-len", type=int, default=TapperConfig.prefix_len)
    ap.add_argument("--scale", type=float, default=1.0, help="each prefix vector's norm, in median word norms")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from tapper.backbone import load_backbone

    backbone = load_backbone(args.backbone)
    target = choose_users(args.task, args.users, args.stage1_users, args.seed, args.min_profile, args.source)[0]
    builder = builder_for(backbone, resolve_configs(target.task)[0])  # the task's own prompt budgets
    tok, model = backbone.tokenizer, backbone.model.eval()
    questions = [(builder.for_question(q).prompt, target.gold(q.id)) for q in target.questions]
    encoded = [(tok(p, add_special_tokens=False)["input_ids"], tok(a, add_special_tokens=False)["input_ids"])
               for p, a in questions]
    emb = model.get_input_embeddings()
    with torch.no_grad():
        word = float(torch.cat([emb(torch.tensor(p, device=backbone.device)).float().norm(dim=-1)
                                for p, _ in encoded]).median())
    gen = torch.Generator().manual_seed(args.seed)
    prefix = torch.randn(args.prefix_len, backbone.hidden_size, generator=gen)
    prefix = (prefix / prefix.norm(dim=-1, keepdim=True) * word * args.scale).to(backbone.device)
    per_question = [nll_by_way(model, p, a, prefix) for p, a in encoded]
    first = tok.convert_ids_to_tokens(encoded[0][0][:1])[0]
    nll = {way: np.array([q[way] for q in per_question]) for way in WAYS}  # (questions, [prompt, answer])
    rows, data = [], {}
    for way in WAYS:
        row: dict = {"prompt_nll": float(nll[way][:, 0].mean()), "answer_nll": float(nll[way][:, 1].mean())}
        cells = ["", ""]
        if way != WAYS[0]:
            for i, key in enumerate(("prompt", "answer")):
                diff = nll[way][:, i] - nll[WAYS[0]][:, i]
                mean, low, high = mean_difference_ci(diff, args.seed)
                row[f"{key}_minus_no_prefix"], row[f"{key}_ci95"] = mean, (low, high)
                cells[i] = f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"
        data[way] = row
        rows.append([way, round(row["prompt_nll"], 3), cells[0], round(row["answer_nll"], 3), cells[1]])
    label = run_label(args.task, args.source, args.backbone)
    result = Result(f"prefix_position_{label}", f"Where the prefix goes: the frozen backbone reading {label}'s "
                    "prompts with a random prefix before or after their first token", {
                        "task": target.task, "label": label, "backbone": args.backbone, "questions": len(encoded),
                        "first_token": first, "word_norm_median": word, "prefix_len": args.prefix_len,
                        "scale": args.scale, "ways": data,
                        "example_prompts": [p for p, _ in questions[:2]]})
    result.tables.append(Table(
        f"{label}: {len(encoded)} target questions, frozen backbone, mean NLL per token (nats)",
        ["way", "prompt NLL", "minus no prefix, paired 95% CI", "gold answer NLL", "minus no prefix, paired 95% CI"],
        rows))
    result.notes.append(f"The prompts' first token is {first!r}. The prefix: {args.prefix_len} random vectors, each "
                        f"of norm {word * args.scale:.2f} ({args.scale} x the median word-embedding norm, {word:.2f}).")
    result.write_and_print(args.out)


if __name__ == "__main__":
    main()
