"""`lamini`: the command-line root. Each stage defines its own commands in its module.

Nothing heavy is imported here: `lamini --help` must answer in well under a second.
"""

from __future__ import annotations

import sys

import click

from lamini_serve import __version__
from lamini_serve.errors import LaminiError


class LaminiGroup(click.Group):
    """Prints user mistakes (LaminiError) as one line, and Ctrl-C without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LaminiError as exc:
            err = click.ClickException(str(exc))
            err.exit_code = getattr(exc, "exit_code", 1)  # 2 for bad command-line input, as click's own
            raise err from None
        except KeyboardInterrupt:
            click.echo("\nInterrupted.", err=True)
            sys.exit(130)


@click.group(cls=LaminiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="lamini")
def cli() -> None:
    """lamini-serve: distill a teacher LLM into a herd of small students, and serve them.

    Models are named the same way everywhere: `embedded` (the bundled
    SmolLM2-135M-Instruct teacher, fetched on first use), a local checkpoint
    folder, or a Hugging Face hub id such as `google/flan-t5-small`.
    """


def _register() -> None:
    from lamini_serve.chat import chat
    from lamini_serve.data.cli import data
    from lamini_serve.engines.setup import setup
    from lamini_serve.eval.cli import eval as eval_cmd
    from lamini_serve.export.cli import export
    from lamini_serve.quickstart import quickstart
    from lamini_serve.serve.cli import serve
    from lamini_serve.teacher.cli import teacher
    from lamini_serve.train.cli import train
    from lamini_serve.ui.cli import ui

    cli.add_command(teacher)
    cli.add_command(chat)
    cli.add_command(data)
    cli.add_command(train)
    cli.add_command(export)
    cli.add_command(serve)
    cli.add_command(setup)
    cli.add_command(ui)
    cli.add_command(eval_cmd)
    cli.add_command(quickstart)


_register()


def main() -> None:
    cli(prog_name="lamini")


if __name__ == "__main__":
    main()
