"""Which top-level p2core definitions a command really ran: the dynamic check of :mod:`p2core.fingerprint`.

With ``P2CORE_TRACE_DEFINITIONS=1`` in the environment, ``p2core <command>`` records every p2core function and method
it calls (``sys.settrace`` on call events only, in every thread) and prints one line to stderr when it exits::

    p2core trace: diffusion.GaussianDiffusion sampling.ddim sample.generate ...

(``module.top-level name``; a method counts for its class). The rerun tests read these lines from the job logs of a
built DAG and check them against the definitions each rule's fingerprint covers. Off by default: it costs a Python
call per traced call.
"""

from __future__ import annotations

import atexit
import inspect
import os
import sys
import threading
from pathlib import Path

from p2core.fingerprint import RESULT_NEUTRAL

ENVIRONMENT = "P2CORE_TRACE_DEFINITIONS"
PREFIX = "p2core trace:"
_PACKAGE_DIR = str(Path(__file__).resolve().parent) + os.sep
# result-neutral modules, but not the entry point every command runs under
_NEUTRAL_FILES = {f"{_PACKAGE_DIR}{module}.py" for module in RESULT_NEUTRAL if module != "__main__"}
_called: set[str] = set()


def _on_call(frame, event, arg):
    code = frame.f_code
    if code.co_filename.startswith(_PACKAGE_DIR):
        if code.co_flags & inspect.CO_OPTIMIZED and not _below_neutral(frame.f_back):  # functions, not bodies
            top = code.co_qualname.split(".")[0]
            if not top.startswith("<"):
                _called.add(f"{Path(code.co_filename).stem}.{top}")
    elif code.co_filename == "<string>" and code.co_argcount:  # generated methods (a dataclass's __init__)
        owner = type(frame.f_locals.get(code.co_varnames[0]))
        if owner.__module__.startswith("p2core.") and not _below_neutral(frame.f_back):
            _called.add(f"{owner.__module__.removeprefix('p2core.')}.{owner.__qualname__.split('.')[0]}")
    return None  # no line events


def _below_neutral(frame) -> bool:
    """Whether a result-neutral p2core module (provenance records, locks, ...) is among the callers: what it runs
    is not part of the step's results."""
    while frame is not None:
        if frame.f_code.co_filename in _NEUTRAL_FILES:
            return True
        frame = frame.f_back
    return False


def _report() -> None:
    print(f"{PREFIX} {' '.join(sorted(_called))}", file=sys.stderr, flush=True)


def start_if_requested() -> None:
    """Start recording (and print the line at exit) when :data:`ENVIRONMENT` is set to a non-empty value."""
    if os.environ.get(ENVIRONMENT):
        sys.settrace(_on_call)
        threading.settrace(_on_call)
        atexit.register(_report)
