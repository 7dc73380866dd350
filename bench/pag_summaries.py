"""What PAG's profile summary says about a user: the summarizer's text cut at its first newline (as PAG decoded
it before SUMMARY_PROMPT_VERSION 2) beside the whole text on one line (as it decodes now).

    .venv/bin/python bench/pag_summaries.py --task LaMP_5R --users 32     # about 90 s on two cores

The targets are the first --users of a quality run's (bench/quality.py's choose_users, seed 0); each summary reads
that user's history through PAG's own prompt (tapper.baselines.pag), greedy, on the untuned backbone PAG uses as
its summarizer. A summary of under 10 words is counted as saying nothing: the small summarizer often opens with
"This user's interests and preferences are:" and puts the list on the next lines.

Writes results/pag_summaries_<label>.{json,md} (<label> as bench/quality.py's): the counts, three summaries both
ways, and one full prompt.
"""

from __future__ import annotations

import argparse

from common import RESULTS, Result, Table
from quality import choose_users, run_label

from tapper.backbone import load_backbone
from tapper.baselines.registry import make_baseline
from tapper.generate import generate_batch

EMPTY_WORDS = 10


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="LaMP_5R")
    ap.add_argument("--source", default=None, help="another dump of the task, as bench/quality.py's --source")
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    target = choose_users(args.task, args.users, 0, 0, source=args.source)[0]
    backbone = load_backbone(args.model)
    pag = make_baseline("pag", backbone, args.task, "/tmp/tapper-pag-summaries", {}, summarizer=backbone)
    prompts = pag.summary_prompts([q.profile for q in target.questions])
    size, tokens = pag.config.summary_batch_size, pag.config.summary_tokens
    whole = pag.write_summaries(prompts)
    cut = []  # PAG's decoding before version 2: a task answer's, stopped at the first newline
    for i in range(0, len(prompts), size):
        cut += [t.strip() for t in generate_batch(backbone.model, backbone.tokenizer, prompts[i:i + size], None,
                                                  tokens)]

    def row(name: str, texts: list[str]) -> list:
        words = [len(t.split()) for t in texts]
        return [name, len(texts), sum(w < EMPTY_WORDS for w in words), round(sum(words) / len(words), 1)]

    table = Table(f"PAG's summaries of {len(prompts)} {args.task} users ({backbone.name}, {tokens} new tokens)",
                  ["decoding", "summaries", f"under {EMPTY_WORDS} words", "mean words"],
                  [row("cut at the first newline (before)", cut), row("whole, on one line (now)", whole)])
    examples = [{"user": q.user_id, "cut": c, "whole": w}
                for q, c, w in zip(target.questions, cut, whole, strict=True)][:3]
    notes = [f"user {e['user']}: cut: {e['cut']!r}; whole: {e['whole']!r}" for e in examples]
    label = run_label(args.task, args.source, args.model)  # as quality.py names its tables
    Result(f"pag_summaries_{label}", f"PAG's profile summaries on {label}: cut at a newline or whole",
           {"task": args.task, "users": len(prompts), "cut": cut, "whole": whole, "prompt_example": prompts[0]},
           [table], notes).write_and_print(args.out)


if __name__ == "__main__":
    main()
