"""Turning imaginairy errors into one-line CLI messages and exit codes (2: usage, 1: runtime)."""

from __future__ import annotations

import contextlib
import sys

import click

from imaginairy.errors import ImaginAIryError, InvalidInputError


@contextlib.contextmanager
def reported_errors():
    """Report our errors as `Error: ...` on stderr and exit 2 (bad input) or 1 (failure), without a traceback."""
    try:
        yield
    except InvalidInputError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    except ImaginAIryError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
