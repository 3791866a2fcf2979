"""Command-line entry glue: Hydra errors and our own ConfigErrors become one line and exit 2; a
write the disk refused (full, quota, read-only) one line and exit 74 (EX_IOERR); a stop on a
signal is one line and exits 75 (SIGTERM/SIGUSR1) or 130 (Ctrl-C), see stopping.py."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Callable, Iterator, Optional

from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, OmegaConfBaseException,
                              ValidationError)

from proxies.config import ConfigError, choice_message
from proxies.rundir import storage_error
from proxies.stopping import EXIT_INTERRUPTED, Stopped

# OmegaConf's message for a value outside an Enum's members (omegaconf/nodes.py, EnumNode).
_ENUM_MISMATCH = re.compile(r"Invalid value '(.*)', expected one of \[(.*)\]")


def _root_omegaconf_error(e: BaseException) -> Optional[OmegaConfBaseException]:
    while e is not None:
        if isinstance(e, OmegaConfBaseException):
            return e
        e = e.__cause__ or e.__context__
    return None


def one_line(e: BaseException) -> str:
    """The message a user sees for a bad config: one line that names the fix."""
    if isinstance(e, ConfigError):
        return str(e)
    oc = _root_omegaconf_error(e)
    if oc is not None:
        key = getattr(oc, "full_key", None) or "?"
        if isinstance(oc, (ConfigKeyError, ConfigAttributeError)) or " not in " in str(oc):
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            where = f" under '{parent}'" if parent else ""
            return (f"unknown config key '{key}'; check the spelling against the keys{where} "
                    "in proxies/config.py (docs/config.md lists them)")
        if isinstance(oc, ValidationError):
            msg = str(oc).splitlines()[0]
            enum = _ENUM_MISMATCH.match(msg)
            if enum:
                return choice_message(key, enum.group(1), enum.group(2).split(", "))
            return f"bad value for '{key}': {msg}; fix the value's type"
        return f"config error at '{key}': {str(oc).splitlines()[0]}"
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    opts = [i for i, ln in enumerate(lines) if ln.startswith("Available options")]
    if opts:  # Hydra: an unknown preset name; list the real ones
        names = []
        for ln in lines[opts[0] + 1:]:
            if ln.startswith("Config search path"):
                break
            if not ln.endswith("_schema"):
                names.append(ln)
        return f"{lines[0]}; available: {', '.join(names)}"
    return f"config error: {lines[0] if lines else type(e).__name__}"


def _fail(e: BaseException) -> None:
    print(f"error: {one_line(e)}", file=sys.stderr)
    sys.exit(2)


EXIT_STORAGE = 74  # sysexits.h EX_IOERR: the fix is on the machine, not in the command


def _storage_or_raise(e: Exception) -> None:
    """A refused write anywhere in `e`'s chain: its one line, exit 74; anything else re-raised."""
    se = storage_error(e)
    if se is None:
        raise e
    print(f"error: {se}", file=sys.stderr)
    sys.exit(EXIT_STORAGE)


def _stopped(e: Stopped) -> None:
    print(str(e), file=sys.stderr)
    sys.exit(e.exit_code)


class Failed(Exception):
    """A failure whose details were reported already (a sweep's failed jobs, each in its line):
    the command ends with this one line, exit 1."""


def _failed(e: Failed) -> None:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def _interrupted() -> None:
    print("interrupted; what was written is kept, rerun the same command to go on",
          file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Inside a Hydra task: our ConfigErrors exit 2 with one line, a stop on a signal exits with
    its code (stopping.py) and one line, before Hydra adds its own report."""
    try:
        yield
    except (ConfigError, OmegaConfBaseException) as e:
        _fail(e)
    except Stopped as e:
        _stopped(e)
    except Failed as e:
        _failed(e)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as e:  # a refused write outside the run's own files (a table, a report)
        _storage_or_raise(e)


def run_cli(hydra_main: Callable[[], None]) -> None:
    """Call a @hydra.main function, turning config and data errors into one line on stderr."""
    from hydra.errors import HydraException

    # Let exceptions reach us instead of Hydra's print.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        hydra_main()
    except Stopped as e:  # SIGTERM/SIGUSR1/SIGINT in the loop: records and checkpoint saved
        _stopped(e)
    except Failed as e:  # a sweep outside a Hydra task (the paper scripts)
        _failed(e)
    except KeyboardInterrupt:  # Ctrl-C outside the loop (start-up, Hydra's own work)
        _interrupted()
    except (ConfigError, HydraException, OmegaConfBaseException) as e:
        _fail(e)
    except Exception as e:
        _storage_or_raise(e)
