"""What every command of the command line shares: its two consoles, its one-line errors and its settings."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

if TYPE_CHECKING:
    from config.settings import Settings

out = Console(highlight=False, soft_wrap=True)  # tokens and URLs must stay on one line to copy
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


class CliError(Exception):
    """A failure shown to the user as one line."""


def one_line_errors(command: F) -> F:
    """Errors end the command with one line on stderr and exit status 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            err.print(f"error: {where}: {first['msg']}")
        except CliError as exc:
            err.print(f"error: {exc}")
        except Exception as exc:  # anything else still reads as one line
            err.print(f"error: {type(exc).__name__}: {exc}")
        raise typer.Exit(1)

    return wrapper  # type: ignore[return-value]


def load_settings() -> Settings:
    """The settings from the environment (`WA_ROUTER_*`), imported only by the commands that need them."""
    from config.settings import Settings

    return Settings()
