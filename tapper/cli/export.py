"""`tapper export`: a trained run as a merged, standard Hugging Face model folder for prompt-embedding engines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Opt = typer.Option


def register(app: typer.Typer) -> None:
    @app.command()
    def export(
        run: Annotated[Path, Opt(help="a trained run directory")],
        out: Annotated[Path, Opt(help="the folder to write (replaced if it exists)")],
        dtype: Annotated[str, Opt(help="saved weights: float32 | bfloat16 | float16")] = "float32",
        device: Annotated[str, Opt(help="where the merge runs")] = "cpu",
    ) -> None:
        """Merge the task LoRA and the bridge into the weights and save a plain HF model folder, with the
        prefix pieces (P_q, the user table, tapper_prefix.json) that tapper.export.PromptEmbedder reads to turn
        requests into prompt embeddings (vLLM: enable_prompt_embeds; see docs/scaling.md)."""
        from tapper.export import DTYPES, export_run

        if dtype not in DTYPES:
            typer.echo(f"error: --dtype must be one of {', '.join(sorted(DTYPES))}, got {dtype!r}", err=True)
            raise typer.Exit(2)
        try:
            folder = export_run(run, out, dtype=dtype, device=device)
        except FileNotFoundError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"exported {run} to {folder} ({dtype}): AutoModelForCausalLM.from_pretrained({str(folder)!r}) "
                   "loads it; tapper.export.PromptEmbedder.from_export builds its prompt embeddings")
