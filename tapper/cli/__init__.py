"""The `tapper` command. Each area registers its own commands; heavy imports stay inside commands."""

import typer

from tapper.cli import baselines as _baselines
from tapper.cli import compare as _compare
from tapper.cli import data as _data
from tapper.cli import evaluate as _evaluate
from tapper.cli import export as _export
from tapper.cli import model as _model
from tapper.cli import serve as _serve
from tapper.cli._errors import TapperGroup

app = typer.Typer(no_args_is_help=True, add_completion=False, help="TAP-PER personalization for HF causal LMs.",
                  cls=TapperGroup)  # one `error:` line for everyday mistakes; tapper's log lines on stderr
for _area in (_data, _evaluate, _model, _baselines, _compare, _serve, _export):
    _area.register(app)
