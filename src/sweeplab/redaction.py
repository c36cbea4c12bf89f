"""Credentials never in clear: a password in a URL (`postgresql://user:secret@host/db` as
`sweep.storage` or `tracking.uri`) is masked wherever sweeplab writes or prints it.

    without_secrets("postgresql://me:secret@db/optuna")   # -> "postgresql://me:***@db/optuna"
    redact_streams()        # everything this process prints (errors, tracebacks, summaries)

The config's YAML and MLflow params go through `without_secrets` (`config.to_yaml`,
`config.to_flat_dict`), so do the files Hydra records of a run (`runtime.config_composed`).
Passwords belong in `~/.pgpass` or the environment; a URL that carries one still works, it is
only never shown.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

MASK = "***"
# scheme://user:password@ : the password is what lies between the user's ":" and the last "@"
# before a blank (SQLAlchemy takes a "/" or ":" in it as it is; "@" only percent-encoded, but
# masking too much is harmless where too little is not)
_PASSWORD_IN_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):\S*@")
# ...?password=secret&... : libpq and SQLAlchemy take it from the query too
_PASSWORD_IN_QUERY = re.compile(r"([?&;](?:password|passwd|pwd)=)[^&;\s'\"]*", re.IGNORECASE)


def without_secrets(text: str) -> str:
    """`text` with the password of every URL in it masked."""
    return _PASSWORD_IN_QUERY.sub(rf"\1{MASK}", _PASSWORD_IN_URL.sub(rf"\1:{MASK}@", text))


class _RedactedStream:
    """A text stream that masks passwords in what is written to it; the rest is the stream's."""

    def __init__(self, stream: TextIO) -> None:
        self.wrapped = stream

    def write(self, text: str) -> int:
        self.wrapped.write(without_secrets(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, ...
        return getattr(self.wrapped, name)


def redact_streams() -> None:
    """Mask passwords in everything this process prints from now on (once per process), log
    handlers made before included (Optuna's is made when it is imported)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, _RedactedStream):
            continue
        redacted = _RedactedStream(stream)
        setattr(sys, name, redacted)
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for handler in getattr(logger, "handlers", []):
                if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
                    handler.setStream(redacted)
