"""The `emgroup` command group and its error handling (bad input and usage errors: one line, exit status 2)."""

import importlib
import os
import platform
import sys
import warnings

import click

from emgroup import __version__
from emgroup.errors import InputError, InputWarning
from emgroup.signals import sigterm_interrupts

#: subcommand name -> module in emgroup.cli that defines a click command named ``command``
SUBCOMMANDS = {
    "simulate": "simulate",
    "preprocess": "preprocess",
    "train": "train",
    "analyze": "analyze",
}
#: glibc settings read only at start-up: without them malloc hands every freed block over 32 MiB back to the system
#: and page-faults it in again on the next training step, which costs 40% of a TARGET-VAE step on 2 CPU cores
#: (benchmarks/throughput.py); with them the blocks stay in the heap for reuse (peak memory unchanged)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32)}


class LazyGroup(click.Group):
    """Imports a subcommand's module only when it runs (keeps `emgroup --help` fast, torch unloaded)."""

    def list_commands(self, ctx):
        return list(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        return importlib.import_module(f"emgroup.cli.{SUBCOMMANDS[name]}").command

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Run the command line with SIGTERM acting as Ctrl-C, each distinct :class:`InputWarning` shown as one line,
        and every error as one line on stderr, ``emgroup: error: ...``: bad input and click's own usage errors
        (exit status 2; click's form takes three lines), an interruption (exit status 130)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            with sigterm_interrupts(), warnings.catch_warnings():
                warnings.simplefilter("always", InputWarning)  # shown once each by _one_line_input_warnings
                warnings.showwarning = _one_line_input_warnings(warnings.showwarning)
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except InputError as err:
            _fail(str(err), 2)
        except getattr(click.exceptions, "NoArgsIsHelpError", ()) as err:  # a bare `emgroup` (click >= 8.2): help
            err.show()
            sys.exit(err.exit_code)
        except click.ClickException as err:
            ctx = getattr(err, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            _fail(" ".join(err.format_message().split()) + hint, 2)
        except (click.Abort, KeyboardInterrupt):
            _fail("interrupted", 130)
        sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, status: int):
    click.echo(f"emgroup: error: {message}", err=True)
    sys.exit(status)


def _one_line_input_warnings(show_other):
    """A ``warnings.showwarning`` that prints an :class:`InputWarning` as one line on stderr, once per file and
    problem, and other warnings with ``show_other``."""
    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            key = (message.path and os.path.realpath(message.path), message.problem)
            if key not in shown:
                shown.add(key)
                click.echo(f"emgroup: warning: {message}", err=True)
        else:
            show_other(message, category, filename, lineno, file, line)
    return show


@click.group("emgroup", cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="emgroup")
def cli():
    """Learn pose-disentangled representations of cryo-EM particles and hand them back to RELION/cryoSPARC.

    \b
    Pipeline:  simulate -> preprocess -> train -> analyze
    Each subcommand has its own --help (units are given for every option).
    """


def main():
    """Console entry point (`emgroup`, `python -m emgroup`): on glibc, restarts the interpreter once with
    :data:`MALLOC_ENV` added to the environment (variables the user set are kept), then runs :func:`cli`."""
    missing = {name: value for name, value in MALLOC_ENV.items() if name not in os.environ}
    if missing and platform.libc_ver()[0] == "glibc":
        os.environ.update(missing)
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    cli()
