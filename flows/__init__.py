"""Prefect flows. Importing the package first hides secrets in every Prefect and Flotilla log."""

from tasks.logs import install_log_redaction

install_log_redaction()
