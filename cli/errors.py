"""One place that turns failures into a one-line message and an exit code (never a traceback)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import redis
from typer import Abort as TyperAbort  # click's own Abort where typer does not vendor click
from typer.exceptions import TyperException

from gridcore.errors import AmbiguousId, GridError, JobNotFound, Unplaceable
from gridcore.connection import BrokerError, describe_error
from cli.say import err_lines


class CliError(Exception):
    """A failure the command itself detected, with its exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _known_errors() -> list[tuple[type[BaseException], int]]:
    from gridcore.localgrid import LocalGridError
    from gridcore.settings import SettingsError
    from gridcore.signing import SigningError

    errors: list[tuple[type[BaseException], int]] = [
        (JobNotFound, 2), (AmbiguousId, 2), (Unplaceable, 2), (SettingsError, 2), (SigningError, 2), (BrokerError, 1), (LocalGridError, 1),
        (GridError, 1),
    ]
    try:
        from descriptors.errors import DescriptorError

        errors.insert(0, (DescriptorError, 2))
    except ImportError:
        pass
    return errors


def _click_error(e: Exception) -> int | None:
    """The exit code of click's own exceptions, which typer raised before it vendored click
    (0.2x); click is not imported for them (a short command would pay for it), so a typer that
    raises them has imported it already."""
    click = sys.modules.get("click")
    if click is None:
        return None
    if isinstance(e, click.exceptions.Exit):
        return e.exit_code
    if isinstance(e, click.exceptions.Abort):
        sys.stderr.write("grid: aborted\n")
        return 1
    if isinstance(e, click.ClickException):
        e.show()
        return 2
    return None


def handle_errors(run: Callable[[], object]) -> int:
    """Run a click/typer app in non-standalone mode; return the process exit code."""
    try:
        result = run()
        return result if isinstance(result, int) else 0
    except TyperAbort:
        sys.stderr.write("grid: aborted\n")
        return 1
    except TyperException as e:  # typer vendors click: its usage errors are not click's
        sys.stderr.write(f"grid: {e.format_message() if hasattr(e, 'format_message') else e}\n")
        return 2
    except CliError as e:
        err_lines(e)
        return e.code
    except redis.RedisError as e:
        err_lines(describe_error(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - known failures become one line; others too, with their type
        if (code := _click_error(e)) is not None:
            return code
        for cls, code in _known_errors():
            if isinstance(e, cls):
                text = str(e)
                if hasattr(e, "problems"):
                    text = "\n".join(getattr(e, "problems")) or text
                err_lines(text)
                return code
        err_lines(f"internal error: {type(e).__name__}: {e}")
        return 1
