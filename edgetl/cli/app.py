"""The ``edgetl`` application: the commands registered in help order, and ``main``, which turns every failure into
one line on stderr and a non-zero exit."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from ..errors import EdgetlError
from .bundle_commands import backbones, env, predict, verify
from .console import err, fail
from .device_commands import bench, targets_app
from .pipeline_commands import distill, export, finetune, optimize, quantize, run, ship, validate
from .report_commands import report

app = typer.Typer(
    help="edgetl: fine-tune, export, validate, benchmark and ship models for edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for _command in (run, optimize, finetune, distill, export, quantize, validate, bench, ship, verify, predict, report,
                 backbones, env):
    app.command()(_command)
app.add_typer(targets_app, name="targets")


def main() -> None:
    """Console-script entry point: every failure ends in one line on stderr and a non-zero exit.

    Errors edgetl raises on purpose (EdgetlError) say what to do; anything else is logged with its traceback
    (errorlog) and named in one line, unless ``--debug`` / ``EDGETL_DEBUG=1`` asks for the traceback itself."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    try:
        code = app(standalone_mode=False)  # usage errors come back here, to be printed as one line
        if code == 130:  # typer turns Ctrl-C into exit code 130
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ClickException as exc:  # a usage error: unknown option, missing argument, bad value
        command = getattr(getattr(exc, "ctx", None), "command_path", "edgetl")
        fail(f"{exc.format_message().rstrip('.')}; see `{command} --help`", exc.exit_code)
    except EdgetlError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted; completed stages are kept, rerun the same command to resume")
        sys.exit(130)
    except typer.Abort:  # end of input at a prompt
        fail("aborted", 1)
    except Exception as exc:
        if _debug():
            raise
        from ..errorlog import one_line, write_log

        fail(one_line(exc, write_log(exc)), 1)


def _debug() -> bool:
    return os.environ.get("EDGETL_DEBUG", "") not in ("", "0") or "--debug" in sys.argv[1:2]


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected error.")] = False,
) -> None:
    """edgetl: fine-tune, export, validate, benchmark and ship models for edge devices."""
