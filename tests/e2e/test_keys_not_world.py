"""Flows carry keys, not the world: no flow-run parameter grows with the number of units or the
size of a prompt, so a unit with a 5 MB prompt runs, and the stages of a 60-unit feature get the
same small parameters as those of a 2-unit one."""

from __future__ import annotations

import json
import sys

import yaml
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

from flows.feature import feature
from tests.e2e.helpers import git, make_target

PROMPT_BYTES = 5 * 2**20
# The agent records how much prompt it was given, and commits the number.
MEASURE = (
    f"{sys.executable} -c \"import os, pathlib; p = pathlib.Path('sizes'); p.mkdir(exist_ok=True); "
    "(p / os.environ['FLOTILLA_UNIT_ID']).write_text("
    "str(os.path.getsize(os.environ['FLOTILLA_PROMPT_FILE'])))\""
)


def write_request(path, units: list[dict]) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "feature": {"id": "keys", "title": "Keys, not the world"},
                "defaults": {"agent": {"command": MEASURE}, "timeout_s": 120},
                "units": units,
            },
            sort_keys=False,
        )
    )


def parameter_sizes(run_key: str) -> dict[str, int]:
    """Each flow run of the run (the feature and its stages) and its parameters' JSON size."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"run:{run_key}"]))
        )
    return {run.name: len(json.dumps(run.parameters, default=str)) for run in runs}


def run_feature(tmp_path, name: str, units: list[dict]) -> dict[str, int]:
    target = make_target(tmp_path / f"{name}-target")
    request = tmp_path / f"{name}.yaml"
    write_request(request, units)
    state = feature(
        request=str(request),
        repo=str(target),
        store=str(tmp_path / "store"),
        run_key=name,
        workdir=str(tmp_path / "work"),
        return_state=True,
    )
    assert state.is_completed(), state.message
    return parameter_sizes(name)


def test_a_unit_with_a_5_mb_prompt_runs_and_no_parameter_carries_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOTILLA_MAX_INPUT_BYTES", str(8 * 2**20))
    big = "Build it exactly so. " * (PROMPT_BYTES // 21)
    sizes = run_feature(tmp_path, "big-prompt", [{"id": "big", "prompt": big}, {"id": "small"}])

    target = tmp_path / "big-prompt-target"
    given = int(git(target, "show", "flotilla/keys:sizes/big"))
    assert given > len(big)  # the whole prompt reached the agent, with the unit's framing
    assert sizes and max(sizes.values()) < 4096, sizes


def test_stage_parameters_do_not_grow_with_the_number_of_units(tmp_path):
    few = run_feature(tmp_path, "few", [{"id": f"u{n}"} for n in range(2)])
    many = run_feature(tmp_path, "many", [{"id": f"u{n}"} for n in range(60)])

    def by_stage(sizes: dict[str, int]) -> dict[str, int]:
        """Stage subflows are named `<run key> · <stage>`, the feature flow run `<run key>`."""
        return {
            (name.split(" · ")[1] if " · " in name else "feature"): s for name, s in sizes.items()
        }

    assert set(by_stage(few)) == set(by_stage(many)) >= {"decompose", "implement", "merge"}
    for stage, size in by_stage(many).items():
        assert size <= by_stage(few)[stage] + 16, (stage, size, by_stage(few)[stage])
