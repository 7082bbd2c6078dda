"""What each coding-agent CLI prints as its machine-readable result, in its documented shape.

Fake CLIs on PATH print these (through `$FAKE_OUTPUT`), so the tests parse what the real tools
print: claude `-p --output-format json`, codex `exec --json` (JSONL events), gemini
`--output-format json`, aider's per-message report, opencode `run --format json` and
cursor-agent `-p --output-format json`.
"""

from __future__ import annotations

import json

ANSWER = "Added the greeting to hello.py."

CLAUDE = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "duration_ms": 12000,
    "duration_api_ms": 11000,
    "num_turns": 4,
    "result": ANSWER,
    "session_id": "5d1c0f4e-0000-4000-8000-000000000000",
    "total_cost_usd": 0.4,
    "usage": {
        "input_tokens": 1200,
        "cache_creation_input_tokens": 300,
        "cache_read_input_tokens": 5000,
        "output_tokens": 800,
        "service_tier": "standard",
    },
}

CODEX_EVENTS = [
    {"type": "thread.started", "thread_id": "0199a213-81c0-7800-8aa1-bbab2a035a53"},
    {"type": "turn.started"},
    {"type": "item.completed", "item": {"id": "item_0", "type": "reasoning", "text": "Looking"}},
    {"type": "item.completed", "item": {"id": "item_1", "type": "agent_message", "text": ANSWER}},
    {
        "type": "turn.completed",
        "usage": {"input_tokens": 24763, "cached_input_tokens": 24448, "output_tokens": 122},
    },
]

GEMINI = {
    "response": ANSWER,
    "stats": {
        "models": {
            "gemini-2.5-pro": {
                "api": {"totalRequests": 2, "totalErrors": 0, "totalLatencyMs": 5053},
                "tokens": {
                    "prompt": 24939,
                    "candidates": 20,
                    "total": 25113,
                    "cached": 21263,
                    "thoughts": 154,
                    "tool": 0,
                },
            }
        },
        "tools": {"totalCalls": 1, "totalSuccess": 1, "totalFail": 0},
        "files": {"totalLinesAdded": 3, "totalLinesRemoved": 0},
    },
}

AIDER = (
    "Applied edit to hello.py\n"
    "Tokens: 2.3k sent, 98 received. Cost: $0.0086 message, $0.0086 session.\n"
    "Applied edit to hello.py\n"
    "Tokens: 3.1k sent, 1.2k cache hit, 150 received. Cost: $0.01 message, $0.0186 session.\n"
)

OPENCODE_EVENTS = [
    {"type": "step_start", "timestamp": 1, "part": {"type": "step-start"}},
    {"type": "text", "timestamp": 2, "part": {"type": "text", "text": ANSWER}},
    {
        "type": "step_finish",
        "timestamp": 3,
        "part": {
            "type": "step-finish",
            "reason": "stop",
            "cost": 0.0123,
            "tokens": {
                "input": 17509,
                "output": 3,
                "reasoning": 40,
                "cache": {"read": 1000, "write": 0},
            },
        },
    },
]

CURSOR = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "duration_ms": 8000,
    "duration_api_ms": 8000,
    "result": ANSWER,
    "session_id": "c6b62c6f",
    "request_id": "10e11780",
}


def printed(preset: str) -> str:
    """The text the preset's CLI prints on stdout."""
    return {
        "claude": json.dumps(CLAUDE),
        "codex": "\n".join(json.dumps(e) for e in CODEX_EVENTS),
        "gemini": json.dumps(GEMINI, indent=2),
        "aider": AIDER,
        "opencode": "\n".join(json.dumps(e) for e in OPENCODE_EVENTS),
        "cursor-agent": json.dumps(CURSOR),
        "copilot": ANSWER,
    }[preset]
