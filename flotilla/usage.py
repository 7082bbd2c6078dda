"""What an agent call spent: tokens, dollars, wall time and turns, read from what its CLI printed.

Each preset asks its CLI for a machine-readable result (see `tasks.agents`); the parsers here
turn that output into one `Usage`. Any agent may instead write
`{"input_tokens", "output_tokens", "cost_usd"}` to `$FLOTILLA_USAGE_FILE`. Where only tokens are
known, a price table per model gives an estimated cost, marked `estimated`.

Token counts: `input_tokens` is every input token the model read, cached ones included;
`cached_tokens` is the part of them served from a prompt cache (cheaper); `output_tokens` is what
it wrote. Pure: no files, no processes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable

from pydantic import BaseModel, Field


class Usage(BaseModel):
    """The spend of one agent call, or the sum of several (an attempt, a unit, a run)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float | None = Field(None, description="None when neither the CLI nor a price knew")
    estimated: bool = Field(False, description="cost_usd came from the price table")
    wall_s: float = 0.0
    turns: int = 0
    calls: int = 0
    model: str = ""
    source: str = Field("", description="where the numbers came from: the preset, usage-file, …")

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def known(self) -> bool:
        """True when anything beyond wall time was reported."""
        return bool(self.tokens or self.cost_usd is not None or self.turns)

    def __add__(self, other: Usage) -> Usage:
        costs = [u.cost_usd for u in (self, other) if u.cost_usd is not None]
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cost_usd=round(sum(costs), 6) if costs else None,
            estimated=self.estimated or other.estimated,
            wall_s=round(self.wall_s + other.wall_s, 3),
            turns=self.turns + other.turns,
            calls=self.calls + other.calls,
            model=self.model or other.model,
            source=self.source or other.source,
        )

    @classmethod
    def total(cls, items: Iterable[Usage]) -> Usage:
        result = cls()
        for item in items:
            result = result + item
        return result

    def cost_text(self) -> str:
        """`$0.42`, `~$0.42` when estimated, `-` when unknown."""
        return format_usd(self.cost_usd, self.estimated)

    def one_line(self) -> str:
        """`$0.42 · 12.3k in (8.1k cached) / 1.2k out · 4 turns · 1m 02s`."""
        parts = [self.cost_text()]
        if self.tokens:
            cached = f" ({format_tokens(self.cached_tokens)} cached)" if self.cached_tokens else ""
            parts.append(
                f"{format_tokens(self.input_tokens)} in{cached} / "
                f"{format_tokens(self.output_tokens)} out"
            )
        if self.turns:
            parts.append(f"{self.turns} turn{'s' if self.turns != 1 else ''}")
        parts.append(f"{self.wall_s:.0f}s agent time")
        return " · ".join(parts)


class AttemptUsage(BaseModel):
    """One attempt's spend in the ledger; entries are appended, never rewritten by a resume."""

    attempt: int
    usage: Usage = Field(default_factory=Usage)


class Price(BaseModel):
    """USD per million tokens for one model."""

    input: float = Field(ge=0, description="Input tokens read fresh.")
    output: float = Field(ge=0, description="Output tokens, reasoning included.")
    cached_input: float | None = Field(
        None, ge=0, description="Input tokens read from a prompt cache; defaults to `input`."
    )


# USD per million tokens, as the vendors list them; `FLOTILLA_PRICES` (JSON) overrides or adds.
DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-4": Price(input=15.0, output=75.0, cached_input=1.5),
    "claude-sonnet-4": Price(input=3.0, output=15.0, cached_input=0.3),
    "claude-haiku-4": Price(input=1.0, output=5.0, cached_input=0.1),
    "opus": Price(input=15.0, output=75.0, cached_input=1.5),
    "sonnet": Price(input=3.0, output=15.0, cached_input=0.3),
    "haiku": Price(input=1.0, output=5.0, cached_input=0.1),
    "gpt-5": Price(input=1.25, output=10.0, cached_input=0.125),
    "gpt-5-mini": Price(input=0.25, output=2.0, cached_input=0.025),
    "gpt-5-codex": Price(input=1.25, output=10.0, cached_input=0.125),
    "gemini-2.5-pro": Price(input=1.25, output=10.0, cached_input=0.31),
    "gemini-2.5-flash": Price(input=0.3, output=2.5, cached_input=0.075),
}


def price_for(model: str, prices: dict[str, Price]) -> Price | None:
    """The price of `model`: an exact entry, else the longest entry it starts with
    (`claude-sonnet-4-5-20250929` → `claude-sonnet-4`), else the one it contains."""
    if not model:
        return None
    name = model.lower().rsplit("/", 1)[-1]
    if name in prices:
        return prices[name]
    starts = [k for k in prices if name.startswith(k.lower())]
    if starts:
        return prices[max(starts, key=len)]
    inside = [k for k in prices if k.lower() in name]
    return prices[max(inside, key=len)] if inside else None


def priced(usage: Usage, model: str, prices: dict[str, Price]) -> Usage:
    """`usage` with an estimated cost from the price table when its CLI reported none."""
    if usage.cost_usd is not None or not usage.tokens:
        return usage
    price = price_for(model or usage.model, prices)
    if price is None:
        return usage
    cached = min(usage.cached_tokens, usage.input_tokens)
    cached_price = price.cached_input if price.cached_input is not None else price.input
    cost = (
        (usage.input_tokens - cached) * price.input
        + cached * cached_price
        + usage.output_tokens * price.output
    ) / 1_000_000
    return usage.model_copy(update={"cost_usd": round(cost, 6), "estimated": True})


# --- what each CLI prints ------------------------------------------------------------------------


class Parsed(BaseModel):
    """What a CLI's output said: its usage and its final answer (for the summary)."""

    usage: Usage = Field(default_factory=Usage)
    text: str = ""


def _json_objects(output: str) -> list[dict]:
    """Every JSON object in `output`: the whole text if it is one, else one per line."""
    stripped = output.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
            if isinstance(value, dict):
                return [value]
        except ValueError:
            pass
    found = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                found.append(value)
    return found


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def parse_claude(output: str) -> Parsed:
    """`claude -p --output-format json`: one result object with `total_cost_usd`, `usage`
    (`input_tokens`, `cache_creation_input_tokens`, `cache_read_input_tokens`, `output_tokens`),
    `num_turns` and `result` (the final answer)."""
    results = [o for o in _json_objects(output) if o.get("type") == "result"]
    if not results:
        return Parsed()
    result = results[-1]
    raw = result.get("usage") or {}
    cache_read = _int(raw.get("cache_read_input_tokens"))
    cache_write = _int(raw.get("cache_creation_input_tokens"))
    usage = Usage(
        input_tokens=_int(raw.get("input_tokens")) + cache_read + cache_write,
        output_tokens=_int(raw.get("output_tokens")),
        cached_tokens=cache_read,
        cost_usd=_float(result.get("total_cost_usd", result.get("cost_usd"))),
        turns=_int(result.get("num_turns")),
        model=_first_key(result.get("modelUsage")),
        source="claude",
    )
    text = result.get("result")
    return Parsed(usage=usage, text=text if isinstance(text, str) else "")


def parse_codex(output: str) -> Parsed:
    """`codex exec --json`: JSONL events; each `turn.completed` carries `usage`
    (`input_tokens`, `cached_input_tokens`, `output_tokens`), and the last `item.completed`
    of type `agent_message` holds the final answer."""
    usage, text = Usage(source="codex"), ""
    for event in _json_objects(output):
        kind = event.get("type")
        if kind == "turn.completed":
            raw = event.get("usage") or {}
            usage = usage + Usage(
                input_tokens=_int(raw.get("input_tokens")),
                cached_tokens=_int(raw.get("cached_input_tokens")),
                output_tokens=_int(raw.get("output_tokens")),
                turns=1,
            )
        elif kind == "item.completed":
            item = event.get("item") or {}
            if item.get("type") in ("agent_message", "assistant_message") and item.get("text"):
                text = str(item["text"])
    return Parsed(usage=usage, text=text)


def parse_gemini(output: str) -> Parsed:
    """`gemini --output-format json`: `{"response", "stats": {"models": {NAME: {"api":
    {"totalRequests"}, "tokens": {"prompt", "candidates", "cached", "thoughts"}}}}}`."""
    objects = [o for o in _json_objects(output) if "response" in o or "stats" in o]
    if not objects:
        return Parsed()
    result = objects[-1]
    models = (result.get("stats") or {}).get("models") or {}
    usage = Usage(source="gemini", model=_first_key(models))
    for stats in models.values():
        tokens = (stats or {}).get("tokens") or {}
        api = (stats or {}).get("api") or {}
        usage = usage + Usage(
            input_tokens=_int(tokens.get("prompt")),
            cached_tokens=_int(tokens.get("cached")),
            output_tokens=_int(tokens.get("candidates")) + _int(tokens.get("thoughts")),
            turns=_int(api.get("totalRequests")),
        )
    text = result.get("response")
    return Parsed(usage=usage, text=text if isinstance(text, str) else "")


AIDER_TOKENS = re.compile(
    r"Tokens:\s*(?P<sent>[\d.,]+[kKmM]?)\s+sent"
    r"(?:,\s*(?P<write>[\d.,]+[kKmM]?)\s+cache write)?"
    r"(?:,\s*(?P<hit>[\d.,]+[kKmM]?)\s+cache hit)?"
    r",\s*(?P<received>[\d.,]+[kKmM]?)\s+received\."
    r"(?:\s*Cost:\s*\$(?P<message>[\d.,]+)\s+message,\s*\$(?P<session>[\d.,]+)\s+session\.)?"
)


def _count(text: str | None) -> int:
    if not text:
        return 0
    text = text.replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    number = text[:-1] if scale != 1 else text
    try:
        return round(float(number) * scale)
    except ValueError:
        return 0


def parse_aider(output: str) -> Parsed:
    """aider's report after each message: `Tokens: 2.3k sent, 1.1k cache hit, 98 received.
    Cost: $0.0086 message, $0.0120 session.` One line per model call; they add up."""
    usage, last_session = Usage(source="aider"), None
    for match in AIDER_TOKENS.finditer(output):
        cached = _count(match["hit"])
        usage = usage + Usage(
            input_tokens=_count(match["sent"]) + _count(match["write"]) + cached,
            cached_tokens=cached,
            output_tokens=_count(match["received"]),
            cost_usd=_float((match["message"] or "").replace(",", "") or None),
            turns=1,
        )
        if match["session"]:
            last_session = _float(match["session"].replace(",", ""))
    if last_session is not None:
        usage = usage.model_copy(update={"cost_usd": last_session})
    return Parsed(usage=usage)


def parse_opencode(output: str) -> Parsed:
    """`opencode run --format json`: JSONL events; each `step_finish` part carries `cost` and
    `tokens` (`input`, `output`, `reasoning`, `cache.read`, `cache.write`); `text` parts hold the
    answer."""
    usage, texts = Usage(source="opencode"), []
    for event in _json_objects(output):
        part = event.get("part") or {}
        if event.get("type") == "step_finish":
            tokens = part.get("tokens") or {}
            cache = tokens.get("cache") or {}
            cached = _int(cache.get("read"))
            usage = usage + Usage(
                input_tokens=_int(tokens.get("input")) + cached + _int(cache.get("write")),
                cached_tokens=cached,
                output_tokens=_int(tokens.get("output")) + _int(tokens.get("reasoning")),
                cost_usd=_float(part.get("cost")),
                turns=1,
            )
        elif event.get("type") == "text" and part.get("text"):
            texts.append(str(part["text"]))
    return Parsed(usage=usage, text=texts[-1] if texts else "")


def parse_cursor(output: str) -> Parsed:
    """`cursor-agent -p --output-format json`: a result object with `result` (the answer) and
    `duration_ms`; it reports no tokens, so only the answer is taken."""
    results = [o for o in _json_objects(output) if o.get("type") == "result"]
    if not results:
        return Parsed()
    text = results[-1].get("result")
    return Parsed(usage=Usage(source="cursor-agent"), text=text if isinstance(text, str) else "")


def parse_usage_file(text: str) -> Usage | None:
    """`$FLOTILLA_USAGE_FILE`: `{"input_tokens", "output_tokens", "cost_usd"}` (also
    `cached_tokens`, `turns`, `model`); None when it is not such an object."""
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    return Usage(
        input_tokens=_int(raw.get("input_tokens")),
        output_tokens=_int(raw.get("output_tokens")),
        cached_tokens=_int(raw.get("cached_tokens")),
        cost_usd=_float(raw.get("cost_usd")),
        turns=_int(raw.get("turns")),
        model=str(raw.get("model") or ""),
        source="usage-file",
    )


def _first_key(value: object) -> str:
    return next(iter(value), "") if isinstance(value, dict) else ""


PARSERS: dict[str, Callable[[str], Parsed]] = {
    "claude": parse_claude,
    "codex": parse_codex,
    "gemini": parse_gemini,
    "aider": parse_aider,
    "opencode": parse_opencode,
    "cursor-agent": parse_cursor,
}


# --- showing it ----------------------------------------------------------------------------------


def format_usd(value: float | None, estimated: bool = False) -> str:
    if value is None:
        return "-"
    if value >= 100:
        text = f"${value:,.0f}"
    elif value >= 0.1 or value == 0:
        text = f"${value:.2f}"
    elif value >= 0.01:
        text = f"${value:.3f}"
    else:
        text = f"${value:.4f}"
    return ("~" if estimated else "") + text


def format_tokens(count: int) -> str:
    if count >= 1_000_000:
        return f"{count / 1_000_000:.1f}M"
    if count >= 1_000:
        return f"{count / 1_000:.1f}k"
    return str(count)
