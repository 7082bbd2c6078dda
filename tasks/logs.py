"""Secrets never reach a Prefect or Flotilla log: a `logging.Filter` redacts every record.

The filter sits on the `prefect` and `flotilla` loggers, on the run loggers Prefect's
`get_run_logger` writes to (`prefect.flow_runs`, `prefect.task_runs`), and on every handler
they and the root logger have, so a record is redacted before any handler formats it, whether
it was logged there or propagated from a child logger. The API handler sends the redacted text
to the Prefect server, so its database never holds a secret either.
"""

from __future__ import annotations

import logging

import prefect  # noqa: F401 - configures Prefect's logging first, so its handlers exist

from flotilla.redaction import redact

LOGGERS = (
    "prefect",
    "prefect.flow_runs",
    "prefect.task_runs",
    "prefect.extra",
    "prefect.workers",
    "flotilla",
)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message (and traceback text) with every known secret as `***`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it would
            return True
        hidden = redact(message)
        if hidden != message:
            record.msg, record.args = hidden, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactSecrets()


def install_log_redaction() -> None:
    """Put the filter on Prefect's and Flotilla's loggers and their handlers (idempotent)."""
    names = set(LOGGERS) | {
        name
        for name in logging.Logger.manager.loggerDict
        if name.startswith(("prefect.", "flotilla."))
    }
    loggers = [logging.getLogger(name) for name in sorted(names)] + [logging.getLogger()]
    for logger in loggers:
        targets: list[logging.Filterer] = [*logger.handlers]
        if logger.name != "root":
            targets.append(logger)
        for target in targets:
            if _FILTER not in target.filters:
                target.addFilter(_FILTER)
