"""Flotilla's settings: `FLOTILLA_*` environment variables, read in one place."""

from __future__ import annotations

import os

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from flotilla.usage import DEFAULT_PRICES, Price


class FlotillaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOTILLA_", extra="ignore")

    store: str = Field(
        ".flotilla/store",
        description="Artifact store URL: a local directory, file://, memory:// or s3://bucket/prefix.",
    )
    workdir: str = Field(
        ".flotilla/work", description="Where clones and worktrees live (local disk, per machine)."
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint for a non-AWS service such as MinIO or moto."
    )
    author_name: str | None = Field(
        None, description="Author of Flotilla's commits, unless the request names one."
    )
    author_email: str | None = Field(None, description="E-mail of that author.")
    rate_limit_max_wait_s: float = Field(
        3600.0, gt=0, description="Longest single wait for an agent's rate limit to reset."
    )
    rate_limit_default_wait_s: float = Field(
        60.0, ge=0, description="Wait after a rate limit that names no reset time."
    )
    rate_limit_total_wait_s: float = Field(
        6 * 3600.0, ge=0, description="After this much waiting in one attempt, the unit fails."
    )
    api_wait_s: float = Field(
        120.0,
        gt=0,
        description="How long a run waits for an unreachable Prefect API to come back before it "
        "stops (exit 4); `flotilla resume` carries it on.",
    )
    github_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("GITHUB_TOKEN", "FLOTILLA_GITHUB_TOKEN"),
        description="Token for the github PR provider, unless `publish.token_secret_block` "
        "names a Prefect Secret block. Never logged or stored.",
    )
    github_max_wait_s: float = Field(
        120.0, ge=0, description="Longest single wait for GitHub's rate limit or a 5xx retry."
    )
    github_retries: int = Field(
        4, ge=0, le=20, description="Retries of one GitHub API call (rate limit, 5xx, network)."
    )
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description="Prices in USD per million tokens, as JSON: "
        '{"MODEL": {"input": 3, "output": 15, "cached_input": 0.3}}. They turn tokens into an '
        "estimated cost when an agent reports no cost; they add to and override the built-in "
        "table (docs/spend.md).",
    )

    def price_table(self) -> dict[str, Price]:
        return {**DEFAULT_PRICES, **self.prices}

    lock_ttl_s: float = Field(
        60.0,
        gt=0,
        description="A run's lock expires this long after its holder's last heartbeat, so a "
        "crashed run never blocks its key for good.",
    )
    store_retry_s: float = Field(
        60.0,
        ge=0,
        description="How long a store call retries a transient fault (refused connection, "
        "timeout, 5xx, throttling) before the unit or run gives up.",
    )
    max_input_bytes: int = Field(
        1_000_000, gt=0, description="Largest request or workflow file Flotilla reads."
    )


def get_settings() -> FlotillaSettings:
    """The settings as the environment has them now; built again only when a FLOTILLA_*
    variable changed (the store asks on every call)."""
    seen = tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith(_READ)))
    cached = _cache.get(seen)
    if cached is None:
        _cache.clear()
        cached = _cache[seen] = FlotillaSettings()
    return cached


_READ = ("FLOTILLA_", "GITHUB_TOKEN")  # every variable a field reads starts with one of these
_cache: dict[tuple[tuple[str, str], ...], FlotillaSettings] = {}
