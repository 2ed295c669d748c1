"""Error handling shared by every entry point: a user's mistake ends in one clear line and exit code 2, a
programming error keeps its (secret-scrubbed) traceback and exits 1.

    def main(argv=None): ...
    if __name__ == "__main__":
        run_main(main)
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any

from verl.utils.secrets import install_log_scrubber, scrub

USER_ERROR_EXIT = 2  # argparse's code for bad usage, too


class UserError(Exception):
    """A mistake in the user's input (file, flag, config value, path): the message says what to fix."""


class ConfigError(UserError, ValueError):
    """A config key or value is wrong (still a ValueError for callers that catch those)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (still a FileNotFoundError)."""


def is_user_error(exc: BaseException) -> bool:
    """UserError (DataValidationError is one), or an endpoint refusing the user's credentials."""
    if isinstance(exc, UserError):
        return True
    # openai.AuthenticationError / PermissionDeniedError: a wrong or missing key, not a bug (checked by name so
    # importing this module never imports openai)
    return type(exc).__module__.startswith("openai") and type(exc).__name__ in (
        "AuthenticationError", "PermissionDeniedError")


def user_error_message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, UserError):
        text = f"{type(exc).__name__}: {text}"
    return scrub(text)


def run_main(main: Callable[..., Any], *args: Any) -> None:
    """Call ``main(*args)`` and exit: its int return value (None = 0); a user error -> ``error: <message>`` on
    stderr, exit 2; any other exception -> its traceback (secrets scrubbed), exit 1."""
    install_log_scrubber()
    try:
        rc = main(*args)
    except SystemExit as exc:
        code = exc.code
        if isinstance(code, str):  # SystemExit("message") from older code paths: a user error too
            print(f"error: {scrub(code)}", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT)
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BaseException as exc:  # noqa: BLE001 - sorted into user errors and bugs below
        if is_user_error(exc):
            print(f"error: {user_error_message(exc)}", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT)
        print(scrub("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)
