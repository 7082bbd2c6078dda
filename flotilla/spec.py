"""The two input files as typed objects: the feature request and the workflow spec.

Each model checks what one object can check on its own; checks that need the whole request
(unknown dependencies, cycles, inputs against outputs) live in `flotilla.validation`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from flotilla.environment import CONTRACT_NAMES, ENV_NAME, PASS_ENV_NAME
from flotilla.redaction import looks_secret

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
SLUG_HELP = (
    "use lowercase letters, digits and dashes, starting with a letter or digit (e.g. 'add-auth')"
)
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN, max_length=64)]

PRESETS = ("claude", "codex", "aider", "gemini", "cursor-agent", "copilot", "opencode")
Preset = Literal["claude", "codex", "aider", "gemini", "cursor-agent", "copilot", "opencode"]
FailureKind = Literal["agent_failed", "tests_failed", "timed_out"]
Pick = Literal["first_pass", "all_pass_then_judge"]
BEST_OF_HELP = "Candidates that implement the unit in parallel; the best one's work is kept."
CANDIDATES_HELP = (
    "Agents for the candidates (names from `agents`, presets or inline agents), used in turn; "
    "without `best_of`, one candidate each."
)
PICK_HELP = (
    "How the winner is chosen: `first_pass` (the first whose tests pass; the others are "
    "stopped) or `all_pass_then_judge` (all run; the judge, else the smallest diff, picks "
    "among those that pass)."
)
JUDGE_HELP = (
    "all_pass_then_judge: the name of an agent from `agents`, or a shell command, run in "
    "$FLOTILLA_CANDIDATES_DIR (each passing candidate's diff, test report and summary); it "
    "prints the winning candidate's number."
)


def _check_env_values(values: dict[str, str]) -> dict[str, str]:
    """`env:` sets plain settings; a secret there would be stored with the run and shown."""
    for name, value in values.items():
        if not ENV_NAME.match(name):
            raise ValueError(
                f"{name!r} is not a variable name; use letters, digits and '_' (e.g. 'MY_FLAG')"
            )
        if name in CONTRACT_NAMES:
            raise ValueError(f"{name} is set by Flotilla for every agent; remove it from `env`")
        if looks_secret(name, value):
            raise ValueError(
                f"the value of {name} looks like a secret, and a request is stored with its run "
                f"and shown in Prefect; export {name} where Flotilla runs and write "
                f"`pass_env: [{name}]` instead"
            )
    return values


def _check_pass_env(names: list[str]) -> list[str]:
    for name in names:
        if not PASS_ENV_NAME.match(name):
            raise ValueError(
                f"{name!r} is not a variable name or prefix; write NAME or PREFIX_* "
                "(letters, digits and '_')"
            )
    return names


EnvValues = Annotated[dict[str, str], AfterValidator(_check_env_values)]
PassEnv = Annotated[list[str], AfterValidator(_check_pass_env)]
ENV_HELP = "Environment variables set for the agent and the tests (plain settings, no secrets)."
PASS_ENV_HELP = (
    "Variables copied from Flotilla's environment (NAME or PREFIX_*): the way to hand a "
    "secret to an agent or a test."
)


class StrictModel(BaseModel):
    """Unknown fields are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(StrictModel):
    """How often a unit is attempted, and how long to wait between attempts."""

    max_attempts: int = Field(1, ge=1, le=50, description="Attempts in all, the first included.")
    backoff: Literal["fixed", "exponential"] = Field(
        "exponential", description="Delay growth between attempts."
    )
    initial_delay_s: float = Field(5.0, ge=0, description="Delay before the second attempt.")
    max_delay_s: float = Field(300.0, ge=0, description="Upper bound of any single delay.")
    jitter: float = Field(
        0.0, ge=0, le=1, description="Random share (0..1) added to or taken from each delay."
    )
    retry_on: list[FailureKind] = Field(
        default_factory=lambda: ["agent_failed", "tests_failed", "timed_out"],
        description="Failure classes that spend an attempt and try again; others fail at once.",
    )

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before `attempt` (2 = the first retry), without jitter."""
        if attempt <= 1:
            return 0.0
        if self.backoff == "fixed":
            return min(self.initial_delay_s, self.max_delay_s)
        return min(self.initial_delay_s * 2 ** (attempt - 2), self.max_delay_s)


class AgentSpec(StrictModel):
    """A coding agent: a preset for a known CLI, or any shell command template."""

    preset: Preset | None = Field(
        None, description=f"A known agent CLI: {', '.join(PRESETS)}. Excludes `command`."
    )
    command: str | None = Field(
        None,
        description="A shell command template; placeholders {unit}, {feature}, {prompt_file}, "
        "{request_dir}, {worktree}. Excludes `preset`.",
    )
    model: str | None = Field(None, description="Model name passed with the preset's model flag.")
    args: list[str] = Field(
        default_factory=list, description="Extra arguments appended to the preset's command line."
    )
    executable: str | None = Field(
        None, description="Path or name of the preset's executable, if not the usual one."
    )
    env: EnvValues = Field(
        default_factory=dict,
        description="Environment variables set for the agent process (plain settings, no secrets).",
    )
    pass_env: PassEnv = Field(
        default_factory=list,
        description="Variables copied from Flotilla's environment into the agent's (NAME or "
        "PREFIX_*), on top of what its preset needs.",
    )
    timeout_s: float | None = Field(None, gt=0, description="Time limit per agent invocation.")
    retry_policy: RetryPolicy | None = Field(
        None, description="Retry policy for every unit this agent runs (unit level wins)."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> AgentSpec:
        if (self.preset is None) == (self.command is None):
            raise ValueError("an agent needs exactly one of `preset` or `command`")
        if self.preset is None and (self.model or self.args or self.executable):
            raise ValueError("`model`, `args` and `executable` apply to presets only")
        return self


AgentRef = Annotated[str, StringConstraints(min_length=1)] | AgentSpec


class Budget(StrictModel):
    """A spending cap: on the request it caps the whole run, in `defaults` or on a unit each unit.

    Spend is what the agents reported (or the price table estimated) and their wall time."""

    usd: float | None = Field(None, gt=0, description="Dollars the agents may spend.")
    tokens: int | None = Field(None, gt=0, description="Input plus output tokens.")
    agent_minutes: float | None = Field(None, gt=0, description="Minutes of agent wall time.")
    hard: bool = Field(
        False,
        description="Run budget: when spent, stop the units in flight too (their partial work "
        "is committed on their branch) instead of letting them finish.",
    )

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.usd is None and self.tokens is None and self.agent_minutes is None:
            raise ValueError("a budget needs at least one of `usd`, `tokens`, `agent_minutes`")
        return self


class FeatureInfo(StrictModel):
    """What the feature is; its id names the branches and the run."""

    id: Slug = Field(description=f"Feature slug; {SLUG_HELP}.")
    title: str = Field(min_length=1, description="PR title.")
    description: str = Field("", description="What the feature is for; opens the PR description.")


class RepoSpec(StrictModel):
    """The target repository. Flotilla clones it and never touches its working tree."""

    url: str = Field(description="Local path (relative to the request file) or git URL.")
    base: str = Field("main", description="Branch the feature starts from; never written.")


class GitIdentity(StrictModel):
    """Author of Flotilla's commits."""

    name: str = Field(min_length=1, description="Author and committer name.")
    email: str = Field(min_length=3, description="Author and committer e-mail.")


class Defaults(StrictModel):
    """Values every unit inherits unless it sets its own."""

    agent: AgentRef | None = Field(None, description="Agent name (from `agents`) or inline agent.")
    test: str | None = Field(None, description="Test command run in the unit's worktree.")
    timeout_s: float = Field(600, gt=0, description="Agent time limit per invocation, seconds.")
    resources: Slug = Field("standard", description="Resource class of a unit.")
    max_iterations: int = Field(
        3, ge=1, le=20, description="Agent ⇄ tests rounds per attempt before it counts as failed."
    )
    retry_policy: RetryPolicy | None = Field(None, description="Default unit retry policy.")
    env: EnvValues = Field(default_factory=dict, description=ENV_HELP)
    pass_env: PassEnv = Field(default_factory=list, description=PASS_ENV_HELP)
    budget: Budget | None = Field(None, description="Each unit's own budget (all its attempts).")
    best_of: int = Field(1, ge=1, le=10, description=BEST_OF_HELP)
    candidates: list[AgentRef] = Field(default_factory=list, description=CANDIDATES_HELP)
    pick: Pick = Field("first_pass", description=PICK_HELP)
    judge: str | None = Field(None, min_length=1, description=JUDGE_HELP)


class UnitSpec(StrictModel):
    """One atomic unit of work: one agent, one worktree, one branch."""

    id: Slug = Field(description=f"Unit slug, unique in the request; {SLUG_HELP}.")
    title: str = Field("", description="Short title for the PR section; defaults to the id.")
    prompt: str = Field("", description="What the agent is asked to do.")
    depends_on: list[str] = Field(default_factory=list, description="Units that must finish first.")
    touches: list[str] = Field(
        default_factory=list, description="Path globs the unit expects to change."
    )
    inputs: list[str] = Field(
        default_factory=list,
        description="Artifacts consumed, as `<unit>/<name>`; implies a dependency on <unit>.",
    )
    outputs: list[str] = Field(
        default_factory=list, description="Artifact names the unit publishes."
    )
    resources: Slug | None = Field(None, description="Resource class; defaults to `defaults`.")
    priority: int = Field(0, description="Higher runs first among ready units.")
    agent: AgentRef | None = Field(None, description="Agent name or inline agent.")
    test: str | None = Field(None, description="Test command; defaults to `defaults.test`.")
    retry_policy: RetryPolicy | None = Field(None, description="Most specific retry policy.")
    timeout_s: float | None = Field(None, gt=0, description="Agent time limit per invocation.")
    max_iterations: int | None = Field(None, ge=1, le=20, description="Agent ⇄ tests rounds.")
    estimate_s: float | None = Field(None, gt=0, description="Expected duration, for scheduling.")
    env: EnvValues = Field(default_factory=dict, description=ENV_HELP)
    pass_env: PassEnv = Field(default_factory=list, description=PASS_ENV_HELP)
    budget: Budget | None = Field(None, description="This unit's budget; beats `defaults.budget`.")
    best_of: int | None = Field(None, ge=1, le=10, description=BEST_OF_HELP)
    candidates: list[AgentRef] | None = Field(None, description=CANDIDATES_HELP)
    pick: Pick | None = Field(None, description=PICK_HELP)
    judge: str | None = Field(None, min_length=1, description=JUDGE_HELP)

    @model_validator(mode="after")
    def _check_names(self) -> UnitSpec:
        for name in self.outputs:
            if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name in (".", ".."):
                raise ValueError(f"output name {name!r} must be a plain file name")
        for ref in self.inputs:
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]*/[A-Za-z0-9._-]+", ref):
                raise ValueError(f"input {ref!r} must look like '<unit>/<artifact name>'")
        return self

    @property
    def display_title(self) -> str:
        return self.title or self.id


class PublishSpec(StrictModel):
    """Where the feature PR goes."""

    provider: Literal["local", "github"] = Field("local", description="PR provider.")
    repo: str | None = Field(None, description="`owner/name` on GitHub (github provider).")
    draft: bool = Field(True, description="Open the PR as a draft.")
    labels: list[str] = Field(default_factory=list, description="Labels set on the PR.")
    api_url: str = Field("https://api.github.com", description="GitHub (Enterprise) API URL.")
    remote: str | None = Field(
        None, description="Git remote URL to push to; defaults to the target repository."
    )
    token_secret_block: str | None = Field(
        None,
        min_length=1,
        description="Name of a Prefect Secret block holding the GitHub token; "
        "without it the token comes from GITHUB_TOKEN.",
    )

    @model_validator(mode="after")
    def _github_needs_repo(self) -> PublishSpec:
        if self.provider == "github" and not (
            self.repo and re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", self.repo)
        ):
            raise ValueError("the github provider needs `repo` as 'owner/name', e.g. 'acme/app'")
        if not re.match(r"^https?://[^/\s]+", self.api_url):
            raise ValueError("`api_url` must be an http(s) URL, e.g. https://api.github.com")
        return self


class FeatureRequest(StrictModel):
    """A feature request: the feature, where it goes, who works on it, and optionally its units."""

    feature: FeatureInfo = Field(description="The feature.")
    repo: RepoSpec | None = Field(None, description="Target repository; --repo/--base override.")
    test: str | None = Field(None, description="The feature's test gate, run after merging.")
    agents: dict[Slug, AgentSpec] = Field(default_factory=dict, description="Named agents.")
    defaults: Defaults = Field(default_factory=Defaults, description="Unit defaults.")
    units: list[UnitSpec] = Field(default_factory=list, description="Units, already decomposed.")
    resources: dict[Slug, int] = Field(
        default_factory=dict, description="Resource classes and their concurrency limits."
    )
    author: GitIdentity | None = Field(None, description="Author of Flotilla's commits.")
    publish: PublishSpec = Field(default_factory=PublishSpec, description="PR provider.")
    budget: Budget | None = Field(
        None, description="The run's total budget; when spent, the run pauses (exit 3)."
    )


Processor = Literal["plan_decomposer", "work_loop", "pr_merger", "feature_pr_creator"]


class StageSpec(StrictModel):
    """One stage of the workflow; `processor` says what it does."""

    name: Slug = Field(description="Stage name, unique in the workflow.")
    type: Literal["single", "parallel"] = Field("single", description="One run or one per item.")
    processor: Processor = Field(description="What the stage does.")
    depends_on: list[str] = Field(default_factory=list, description="Earlier stages.")
    inputs: list[str] = Field(default_factory=list, description="Outputs of earlier stages.")
    outputs: list[str] = Field(default_factory=list, description="Names this stage produces.")
    foreach: str | None = Field(None, description="For `parallel`: an earlier stage's output.")
    max_concurrent: int = Field(5, ge=1, le=1000, description="Units running at once.")
    work_pool: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="work_loop: run each unit as a flow run of the `unit` deployment on this "
        "Prefect work pool (workers on many machines), instead of in the orchestrator's process.",
    )
    retry_policy: RetryPolicy | None = Field(None, description="Least specific retry policy.")
    mode: Literal["static", "llm"] = Field("static", description="Decomposer mode.")
    agent: AgentRef | None = Field(
        None,
        description="llm decomposer: the agent that plans (a name from the request's `agents`, "
        "a preset, or an inline agent); defaults to the request's `defaults.agent`.",
    )
    max_rounds: int = Field(
        3, ge=1, le=10, description="llm decomposer: answers asked for before giving up."
    )
    merge_strategy: Literal["merge", "squash", "sequential_rebase"] = Field(
        "merge", description="How unit branches become the feature branch."
    )
    on_conflict: Literal["reimplement", "fail"] = Field(
        "reimplement", description="What a merge conflict does."
    )
    on_gate_failure: Literal["fail", "fix"] = Field(
        "fail",
        description="When the feature's tests fail after merging: stop naming the unit that "
        "broke them (found by bisection), or have that unit's agent fix it and merge again.",
    )
    allow_partial: bool = Field(False, description="Merge and publish despite failed units.")

    @model_validator(mode="after")
    def _foreach_only_parallel(self) -> StageSpec:
        if self.type == "parallel" and not self.foreach:
            raise ValueError("a `parallel` stage needs `foreach` (an earlier stage's output)")
        if self.type == "single" and self.foreach:
            raise ValueError("`foreach` is only for `parallel` stages")
        return self


class WorkflowBody(StrictModel):
    name: str = Field(min_length=1, description="Workflow name.")
    stages: list[StageSpec] = Field(min_length=1, description="Stages, in order.")
    resources: dict[Slug, int] = Field(
        default_factory=dict, description="Resource classes and their concurrency limits."
    )
    unknown_touches: Literal["trust", "serialize"] = Field(
        "trust", description="Units without `touches`: trust them, or run them alone."
    )


class WorkflowSpec(StrictModel):
    """The workflow: which stages run, in which order, with which settings."""

    workflow: WorkflowBody = Field(description="The workflow.")

    def stage_for(self, processor: str) -> StageSpec | None:
        return next((s for s in self.workflow.stages if s.processor == processor), None)
