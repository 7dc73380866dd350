"""`python -m tapper.cli`: the `tapper` command, for launchers that take a module (torchrun -m tapper.cli ...)."""

from tapper.cli import app

app(prog_name="tapper")
