"""What a `medgr2` command prints when it fails: one line per problem, naming the thing and what to do.

A person who mistypes a key, names a missing file, asks for more workers than CPUs or points at a Ray
cluster that is not there should read what to change, not a stack trace. `describe` turns the errors
this package raises on purpose (each carries a message written for a person) into that line and an
exit status; anything else is a bug, and says so. `medgr2 --debug ...` prints the traceback as well.
"""

from __future__ import annotations

from medgr2_ray.checkpoint import CheckpointError
from medgr2_ray.config import ConfigError
from medgr2_ray.data.store import DataFormatError

CONFIG_STATUS = 2  # the config (or the command line) is wrong: nothing ran
FAILED_STATUS = 1  # the command ran and could not finish

# Errors whose message is already written for a person (file, field, what to do).
_USER_ERRORS: tuple[type[BaseException], ...] = (DataFormatError, CheckpointError)


class UserError(Exception):
    """A problem the person can fix; the message names it and says how."""


def _os_error(exc: OSError) -> str:
    if exc.filename is None:
        return str(exc)
    what = {FileNotFoundError: "does not exist", IsADirectoryError: "is a folder, not a file",
            NotADirectoryError: "is not a folder", PermissionError: "cannot be read or written (permissions)"}
    reason = what.get(type(exc), exc.strerror or str(exc))
    return f"{exc.filename} {reason}; check the path"


def describe(exc: BaseException) -> tuple[list[str], int]:
    """The lines to print (each one problem) and the exit status for `exc`."""
    if isinstance(exc, ConfigError):
        return [f"config error: {line}" for line in str(exc).splitlines() if line.strip()], CONFIG_STATUS
    if isinstance(exc, (UserError, *_USER_ERRORS)):
        return [str(exc)], FAILED_STATUS
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, ConnectionError):  # Ray not reachable (loop.runtime.RayUnreachableError, or Ray's own)
        return [first or "cannot reach the Ray cluster; start one with `ray start --head` or set its address "
                "(ray.address, --address or RAY_ADDRESS)"], FAILED_STATUS
    if isinstance(exc, OSError):
        return [_os_error(exc)], FAILED_STATUS
    notes = "".join(f" ({note})" for note in getattr(exc, "__notes__", ()))  # e.g. where the run's Ray log is
    return [f"unexpected error ({type(exc).__name__}: {first}); rerun with --debug for the traceback and "
            f"report it{notes}"], FAILED_STATUS
