"""Framework log noise kept off the terminal for the commands that import frameworks in the
xbn process itself (``convert``, ``audit``, ``verify``).

TensorFlow prints its CUDA probe, oneDNN and CPU-feature banners and absl warnings on stderr
at import, before ``TF_CPP_MIN_LOG_LEVEL`` can take effect, and JAX warns about missing GPU
builds. The run workers already keep that out of sight by sending their stderr to a temporary
file and showing its tail only when the worker fails; this does the same for a block of the
command: stderr (file descriptor 2, so C++ logs too) goes to a temporary file, and comes back
only when the block ends with an unexpected exception.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}
"""Set (unless the user set it) before a framework is imported, as the workers do."""

TAIL_LINES = 30


@contextlib.contextmanager
def framework_logs_hidden(expected: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Hide what frameworks write on stderr during the block. On an exception that is not one
    of ``expected`` (the command's own, already clear errors), the last lines written are
    printed, so a crash is never left without its cause."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedding host): nothing to hide
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        failed = False
        try:
            yield
        except expected:
            raise
        except BaseException:
            failed = True
            raise
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                tmp.seek(0)
                lines = tmp.read().decode("utf-8", "replace").splitlines()[-TAIL_LINES:]
                if lines:
                    print("\n".join(["xbn: the frameworks' log before the failure:", *lines]),
                          file=sys.stderr)
