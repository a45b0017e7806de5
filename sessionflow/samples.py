"""Made-up Claude Code transcripts that look like real ones: for demos, tests and benchmarks.

Everything is drawn from a seeded random.Random, so a seed always gives the same bytes. Text
comes from slices of one fixed corpus rather than word-by-word choices: that keeps 2,000
files of ~100 KB to a few seconds.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal

SizeDistribution = Callable[[random.Random], int]
SampleKind = Literal["normal", "short", "corrupt", "not_transcript"]

KB = 1000
MB = 1000 * KB

# Sessions start within 60 days of this instant; a fixed base keeps the output deterministic.
_BASE_MS = int(datetime(2025, 6, 2, 8, 0, tzinfo=UTC).timestamp() * 1000)
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_MODELS = ("claude-sonnet-4-20250514", "claude-opus-4-1-20250805", "claude-sonnet-4-5-20250929")
_VERSIONS = ("1.0.72", "1.0.83", "1.0.98", "2.0.14")
# With subagent runs, one version of each layout Claude Code writes them in: inline sidechain
# lines (1.x), agent-<id>.jsonl beside the session (2.0.x), <session>/subagents/ (2.1.x).
_RUN_VERSIONS = ("1.0.98", "2.0.76", "2.1.39")
_RUN_MODEL = "claude-haiku-4-5-20251001"
_TASKS = (
    (
        "Find the callers",
        "Find every caller of {file} and list them with their line numbers.",
        "general-purpose",
    ),
    (
        "Explore the tests",
        "Read the tests that cover {file} and say what they leave out.",
        "Explore",
    ),
    (
        "Check the config",
        "Check how {file} reads its configuration and report any default "
        "that differs from the README.",
        "general-purpose",
    ),
    ("Review the diff", "Review the changes to {file} on this branch for bugs.", "code-reviewer"),
)
_RUN_TOOLS = ("Read", "Grep", "Glob", "Bash")
_TOKEN_TABLE = (_ALPHABET * 5)[:256].encode("ascii")


def log_uniform_sizes(low: int, high: int) -> SizeDistribution:
    """Sizes between low and high bytes, as many from 10-20 KB as from 100-200 KB."""
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got {low} and {high}")
    lo, hi = math.log(low), math.log(high)

    def draw(rng: random.Random) -> int:
        return round(math.exp(rng.uniform(lo, hi)))

    return draw


_SMALL = log_uniform_sizes(5 * KB, 200 * KB)
_LARGE = log_uniform_sizes(200 * KB, 2 * MB)


def default_sizes(rng: random.Random) -> int:
    """Most sessions 5-200 KB, one in twelve 200 KB-2 MB: about 110 KB on average."""
    return _LARGE(rng) if rng.random() < 0.08 else _SMALL(rng)


@dataclass(frozen=True)
class Project:
    name: str
    cwd: str
    branches: tuple[str, ...]
    files: tuple[str, ...]  # relative to cwd

    @property
    def dir_name(self) -> str:
        """The folder Claude Code keeps this project's sessions in: the cwd with every
        character that is not a letter or digit replaced by '-'."""
        return "".join(c if c.isascii() and c.isalnum() else "-" for c in self.cwd)


PROJECTS: tuple[Project, ...] = (
    Project(
        "myapp",
        "/home/user/src/myapp",
        ("main", "feature/retry-http", "fix/login-redirect"),
        (
            "src/myapp/__init__.py",
            "src/myapp/cli.py",
            "src/myapp/api.py",
            "src/myapp/models.py",
            "src/myapp/http.py",
            "tests/test_api.py",
            "tests/test_http.py",
            "pyproject.toml",
            "README.md",
        ),
    ),
    Project(
        "api-server",
        "/home/user/src/api-server",
        ("main", "feat/pagination", "chore/deps"),
        (
            "src/index.ts",
            "src/routes/users.ts",
            "src/routes/orders.ts",
            "src/db/pool.ts",
            "src/middleware/auth.ts",
            "test/users.test.ts",
            "package.json",
            "tsconfig.json",
        ),
    ),
    Project(
        "data-pipeline",
        "/home/user/work/data-pipeline",
        ("main", "exp/dedupe"),
        (
            "pipeline/extract.py",
            "pipeline/transform.py",
            "pipeline/load.py",
            "notebooks/explore.ipynb",
            "notebooks/quality.ipynb",
            "tests/test_transform.py",
            "Makefile",
        ),
    ),
    Project(
        "website",
        "/home/user/src/website",
        ("main", "redesign"),
        (
            "src/components/Header.tsx",
            "src/components/Footer.tsx",
            "src/pages/index.tsx",
            "src/styles/global.css",
            "next.config.js",
        ),
    ),
    Project(
        "infra-tools",
        "/home/user/src/infra-tools",
        ("main", "fix/timeout"),
        ("cmd/deploy/main.go", "internal/k8s/client.go", "internal/k8s/client_test.go", "go.mod"),
    ),
)

_PROMPTS = (
    "Add retries with exponential backoff to the HTTP client, and make the retry count "
    "configurable.",
    "The login redirect loops forever when the session cookie expires. Can you find out why "
    "and fix it?",
    "Write tests for the pagination of the orders endpoint, including the empty page and the "
    "last page.",
    "Refactor {file} so that the database access goes through one module.",
    "Why does `make test` fail on CI but pass locally? Here is the log:\n\n"
    "FAILED tests/test_api.py::test_create_user - AssertionError: 409 != 201",
    "Explain how the authentication middleware works, then add rate limiting to it.",
    "Rename the `process` function in {file} to something that says what it does and update "
    "every caller.",
    "Add a --dry-run flag to the deploy command that prints what would change.",
    "The notebook {file} takes 10 minutes to run. Profile it and make the slow cell faster.",
    "Upgrade the dependencies in package.json and fix whatever breaks.",
    "Add type hints to {file} and make mypy pass in strict mode.",
    "Implement dark mode for the site header, following the existing CSS variables.",
    "Set up a GitHub Actions workflow that runs lint and tests on every push.",
    "Find and remove dead code in the project; list what you removed.",
    "Can you review the diff on this branch and point out anything risky?",
)
_FOLLOW_UPS = (
    "That test still fails, see the output above.",
    "Looks good. Now also handle the case where the server returns 429.",
    "Please don't change the public API, keep the old name as an alias.",
    "Run the full test suite again.",
    "Can you make it simpler? This is more code than I expected.",
    "Commit this with a clear message.",
    "Also update the README to mention the new option.",
    "Why did you change {file}? Revert that part.",
    "Good. What about the error message when the config file is missing?",
    "yes",
    "Try a different approach: use the standard library instead of a new dependency.",
)
_ASSISTANT_TEXTS = (
    "I'll start by looking at how this is implemented now.",
    "Let me read the relevant files first.",
    "Now I understand the problem. The fix is small: the check runs before the value is set.",
    "Let me run the tests to see the current state.",
    "The tests pass now. Here is a summary of what I changed:\n\n1. Moved the retry loop into "
    "its own function\n2. Made the delay grow exponentially, capped at 30 seconds\n3. Added "
    "tests for both the success and the give-up paths.",
    "I found the cause: the cookie's expiry is compared in local time while the server writes UTC.",
    "I'll search for every caller before renaming anything.",
    "Done. The change is limited to two files and every existing test still passes.",
    "There are two ways to do this; I'll take the one that keeps the public API unchanged.",
)
_CODE = (
    "import os",
    "from pathlib import Path",
    "",
    "def load_config(path: Path) -> dict[str, str]:",
    '    """Read the key=value pairs of a config file."""',
    "    values = {}",
    "    for line in path.read_text().splitlines():",
    "        if not line.strip() or line.startswith('#'):",
    "            continue",
    "        key, _, value = line.partition('=')",
    "        values[key.strip()] = value.strip()",
    "    return values",
    "",
    "class RetryPolicy:",
    "    def __init__(self, attempts: int = 3, base_delay: float = 0.5) -> None:",
    "        self.attempts = attempts",
    "        self.base_delay = base_delay",
    "",
    "    def delay(self, attempt: int) -> float:",
    "        return min(30.0, self.base_delay * 2 ** attempt)",
    "export async function listOrders(req: Request, res: Response) {",
    "  const page = Number(req.query.page ?? 1);",
    "  const rows = await pool.query('SELECT * FROM orders LIMIT $1 OFFSET $2', [size, off]);",
    "  res.json({ items: rows, page });",
    "}",
    "func (c *Client) Apply(ctx context.Context, m Manifest) error {",
    '\tif err := c.validate(m); err != nil {\n\t\treturn fmt.Errorf("validate: %w", err)\n\t}',
    "\treturn c.do(ctx, m)",
    "}",
    "  // TODO: handle the empty page",
    "    assert response.status_code == 201, response.text",
)
_BASH = (
    ("pytest -q", "Run the test suite"),
    ("npm test", "Run the tests"),
    ("git status", "Show the working tree status"),
    ("git diff --stat", "Summarise the changes"),
    ("make lint", "Run the linters"),
    ("go test ./...", "Run the Go tests"),
    ("ruff check . && mypy src", "Lint and type-check"),
)
_GREP = ("def retry", "TODO", "session_cookie", "listOrders", "import requests", "process\\(")


@cache
def _corpus() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """5,000 lines of code-like text, plain and numbered the way the Read tool shows a file,
    each line already escaped for JSON: every blob of text the samples need is a run of them."""
    rng = random.Random(20250602)
    lines = [rng.choice(_CODE) for _ in range(5000)]
    plain = tuple(_escape(line) for line in lines)
    numbered = tuple(_escape(f"{i:>6}\t{line}") for i, line in enumerate(lines, start=1))
    return plain, numbered


def _escape(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _run_of_lines(rng: random.Random, lines: tuple[str, ...], size: int) -> str:
    count = max(1, min(len(lines) // 2, size // 40))  # ~40 characters a line
    start = _rand(rng, 0, len(lines) - count)
    return "\\n".join(lines[start : start + count])


def _token(rng: random.Random, prefix: str, length: int) -> str:
    # Random bytes mapped onto the alphabet in C: rng.choices per character is the slowest
    # part of the generator otherwise.
    return prefix + rng.randbytes(length).translate(_TOKEN_TABLE).decode("ascii")


def _rand(rng: random.Random, low: int, high: int) -> int:
    """An int in [low, high): rng.randrange's checks cost more than the rest of an event."""
    return low + int(rng.random() * (high - low))


def _uuid(rng: random.Random) -> str:
    h = rng.randbytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"  # shaped as a version 4 UUID


def _iso(ms: int) -> str:
    """Claude Code's timestamp form, 2025-06-02T08:00:00.000Z."""
    seconds, millis = divmod(ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# How json.dumps writes a placeholder "\x00<n>\x00" (see _Session.text).
_PLACEHOLDER = re.compile(r"\\u0000(\d+)\\u0000")


class _Session:
    """The state a transcript's events share: ids, the clock, the running context size."""

    def __init__(
        self,
        rng: random.Random,
        project: Project,
        session_id: str,
        start_ms: int,
        *,
        runs: list[SubagentRun] | None = None,
        run_of: _Session | None = None,
        agent_id: str | None = None,
    ):
        """runs: where the session's subagent runs go (None: it starts none). run_of: the
        session a subagent run belongs to (this is then the run, with agent_id in 2.x)."""
        self.rng = rng
        self.project = project
        self.session_id = session_id
        self.now = start_ms
        self.parent: str | None = None
        self.runs = runs
        if run_of is None:
            self.branch = rng.choice(project.branches)
            self.version = rng.choice(_VERSIONS)
            if runs is not None:
                self.version = rng.choice(_RUN_VERSIONS)
            self.model = rng.choices(_MODELS, weights=(6, 2, 3))[0]
        else:
            self.branch, self.version, self.model = run_of.branch, run_of.version, _RUN_MODEL
        self.context = _rand(rng, 8_000, 20_000)  # tokens already cached at the start
        self.raw: list[str] = []
        # The fields every event of the session repeats, encoded once.
        shared: dict[str, Any] = {
            "isSidechain": run_of is not None,
            "userType": "external",
            "cwd": project.cwd,
            "sessionId": session_id,
            "version": self.version,
            "gitBranch": self.branch,
        }
        if agent_id is not None:
            shared["agentId"] = agent_id
        self.shared = json.dumps(shared, ensure_ascii=False, separators=(",", ":"))[1:-1]

    @property
    def layout(self) -> str:
        return self.version.split(".")[0] + "." + self.version.split(".")[1]

    def subagent(self) -> tuple[_Session, str | None]:
        """A subagent run this session starts now, and its agent id (2.x names runs)."""
        agent_id = None
        if self.layout != "1.0":
            agent_id = self.rng.randbytes(4).hex()[: 8 if self.layout == "2.0" else 7]
            if self.layout == "2.1":
                agent_id = "a" + agent_id[:6]
        run = _Session(
            self.rng, self.project, self.session_id, self.now, run_of=self, agent_id=agent_id
        )
        return run, agent_id

    def warmup_run(self) -> None:
        """The two-line "Warmup" run Claude Code 2.0 wrote for each session it started."""
        assert self.runs is not None
        run, agent_id = self.subagent()
        assert agent_id is not None
        lines = [run.event("user", 0, message={"role": "user", "content": "Warmup"})]
        lines += run.assistant([{"type": "text", "text": "I'm ready to help."}])
        self.runs.append(SubagentRun(agent_id, self.layout, lines))

    def task_call(self) -> tuple[dict[str, Any], list[bytes], tuple[str, dict[str, Any]]]:
        """A Task tool_use, the subagent run it starts (its lines, for a 1.x transcript to
        carry inline; 2.x runs go to self.runs), and the tool result the session gets back."""
        assert self.runs is not None
        rng = self.rng
        description, prompt, kind = rng.choice(_TASKS)
        prompt = prompt.replace("{file}", rng.choice(self.project.files))
        block: dict[str, Any] = {"type": "tool_use", "id": _token(rng, "toolu_01", 22)}
        block["name"] = "Task"
        block["input"] = {"description": description, "prompt": prompt, "subagent_type": kind}
        started = self.now
        run, agent_id = self.subagent()
        lines = [run.event("user", 10, message={"role": "user", "content": prompt})]
        steps = _rand(rng, 1, 4)
        for _ in range(steps):
            run.raw.clear()
            call, result = run.tool_call(2_000, names=_RUN_TOOLS)
            lines += run.assistant([call])
            lines.append(run.tool_result(call["id"], result, False))
        answer = rng.choice(_ASSISTANT_TEXTS)
        lines += run.assistant([{"type": "text", "text": answer}])
        self.now = run.now
        details: dict[str, Any] = {"content": [{"type": "text", "text": answer}]}
        if agent_id is not None:
            details = {"status": "completed", "prompt": prompt, "agentId": agent_id, **details}
            self.runs.append(SubagentRun(agent_id, self.layout, lines))
            lines = []
        details["totalDurationMs"] = self.now - started
        details["totalToolUseCount"] = steps
        return block, lines, (answer, details)

    def text(self, escaped: str) -> str:
        """A placeholder for text already escaped for JSON, which dumps() puts in place:
        escaping the same corpus again and again was most of the generator's time."""
        self.raw.append(escaped)
        return f"\x00{len(self.raw) - 1}\x00"

    def blob(self, size: int) -> str:
        return self.text(_run_of_lines(self.rng, _corpus()[0], size))

    def numbered(self, size: int) -> str:
        return self.text(_run_of_lines(self.rng, _corpus()[1], size))

    def event(self, kind: str, advance_ms: int, **fields: Any) -> bytes:
        """One event line, laid out as Claude Code writes it. The envelope is joined as text
        around the encoded fields: encoding it again for every line was a third of the time."""
        self.now += advance_ms
        event_id = _uuid(self.rng)
        parent = "null" if self.parent is None else f'"{self.parent}"'
        self.parent = event_id
        body = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))[1:-1]
        if self.raw:
            body = _PLACEHOLDER.sub(lambda m: self.raw[int(m.group(1))], body)
        line = (
            f'{{"parentUuid":{parent},{self.shared},"type":"{kind}",{body},'
            f'"uuid":"{event_id}","timestamp":"{_iso(self.now)}"}}\n'
        )
        return line.encode()

    def user_prompt(self, text: str) -> bytes:
        wait = _rand(self.rng, 5_000, 240_000)  # the person reads and types
        return self.event("user", wait, message={"role": "user", "content": text})

    def assistant(self, blocks: list[dict[str, Any]]) -> list[bytes]:
        """One assistant message, written the way Claude Code does: a line per content block,
        each repeating the message id and its usage."""
        rng = self.rng
        output = _rand(rng, 20, 900)
        created = _rand(rng, 50, 3_000)
        usage = {
            "input_tokens": _rand(rng, 3, 12),
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": self.context,
            "output_tokens": output,
            "service_tier": "standard",
        }
        self.context += created
        message_id = _token(rng, "msg_01", 22)
        request_id = _token(rng, "req_011C", 20)
        lines = []
        for block in blocks:
            message = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [block],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage,
            }
            thinking_ms = _rand(rng, 800, 20_000)
            lines.append(
                self.event("assistant", thinking_ms, message=message, requestId=request_id)
            )
        return lines

    def tool_result(
        self, tool_use_id: str, result: tuple[str, dict[str, Any]], is_error: bool
    ) -> bytes:
        content, details = result
        block: dict[str, Any] = {"tool_use_id": tool_use_id, "type": "tool_result"}
        block["content"] = content
        if is_error:
            block["is_error"] = True
        return self.event(
            "user",
            _rand(self.rng, 50, 30_000),
            message={"role": "user", "content": [block]},
            toolUseResult=details,
        )

    def tool_call(
        self, output_size: int, names: tuple[str, ...] | None = None
    ) -> tuple[dict[str, Any], tuple[str, dict[str, Any]]]:
        """A tool_use block, and the content and toolUseResult details its result carries."""
        rng = self.rng
        cwd = self.project.cwd
        path = f"{cwd}/{rng.choice(self.project.files)}"
        if names is None:
            name = rng.choices(
                ("Read", "Edit", "Bash", "Grep", "Write", "MultiEdit", "Glob", "TodoWrite"),
                weights=(30, 20, 18, 10, 5, 3, 6, 4),
            )[0]
        else:
            name = rng.choice(names)
        tool_input: dict[str, Any]
        details: dict[str, Any] = {}
        if name == "Read":
            tool_input = {"file_path": path}
            result = self.numbered(output_size)
        elif name in ("Edit", "MultiEdit") and path.endswith(".ipynb"):
            name = "NotebookEdit"
            tool_input = {"notebook_path": path, "new_source": self.blob(300), "cell_id": "c3"}
            result = "Updated cell c3"
        elif name == "Edit":
            old, new = self.blob(_rand(rng, 40, 400)), self.blob(_rand(rng, 40, 600))
            tool_input = {"file_path": path, "old_string": old, "new_string": new}
            intro = f"The file {path} has been updated. Here's the result of running `cat -n` on "
            intro += "a snippet of the edited file:\n"
            result = self.text(_escape(intro) + _run_of_lines(rng, _corpus()[1], 800))
            details = {"filePath": path, "oldString": old, "newString": new}
        elif name == "MultiEdit":
            edits = [
                {"old_string": self.blob(80), "new_string": self.blob(120)}
                for _ in range(_rand(rng, 2, 5))
            ]
            tool_input = {"file_path": path, "edits": edits}
            result = f"Applied {len(edits)} edits to {path}"
        elif name == "Write":
            tool_input = {"file_path": path, "content": self.blob(min(output_size, 20_000))}
            result = f"File created successfully at: {path}"
        elif name == "Bash":
            command, description = rng.choice(_BASH)
            tool_input = {"command": command, "description": description}
            result = self.blob(output_size)
            details = {"stdout": result, "stderr": "", "interrupted": False, "isImage": False}
        elif name == "Grep":
            tool_input = {"pattern": rng.choice(_GREP), "path": cwd, "output_mode": "content"}
            result = self.blob(min(output_size, 4_000))
        elif name == "Glob":
            tool_input = {"pattern": "**/*.py"}
            result = "\n".join(f"{cwd}/{f}" for f in self.project.files)
        else:
            todos = [{"content": "Write the tests", "status": "in_progress", "id": "1"}]
            tool_input = {"todos": todos}
            result = "Todos have been modified successfully."
            details = {"oldTodos": [], "newTodos": todos}
        block: dict[str, Any] = {"type": "tool_use", "id": _token(rng, "toolu_01", 22)}
        block["name"] = name
        block["input"] = tool_input
        return block, (result, details)

    def exchange(
        self, prompt: str, output_size: int, max_steps: int, enough: Callable[[], bool]
    ) -> Iterator[bytes]:
        """A prompt, the agent's tool-using steps (fewer once enough() says the transcript is
        big enough), and its closing reply."""
        rng = self.rng
        yield self.user_prompt(prompt)
        for _ in range(_rand(rng, 0, max_steps + 1)):
            if enough():
                break
            self.raw.clear()  # placeholders live for one step: its tool calls and results
            blocks: list[dict[str, Any]] = []
            if rng.random() < 0.6:
                blocks.append({"type": "text", "text": rng.choice(_ASSISTANT_TEXTS)})
            calls = [self.tool_call(output_size) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
            inline: list[bytes] = []
            if self.runs is not None and rng.random() < 0.15:
                task, inline, task_result = self.task_call()
                calls.append((task, task_result))
            blocks.extend(block for block, _ in calls)
            yield from self.assistant(blocks)
            yield from inline  # a 1.x subagent run, written inside the session
            for block, result in calls:
                yield self.tool_result(block["id"], result, rng.random() < 0.03)
        yield from self.assistant([{"type": "text", "text": rng.choice(_ASSISTANT_TEXTS)}])

    def prompt(self, pool: tuple[str, ...]) -> str:
        return self.rng.choice(pool).replace("{file}", self.rng.choice(self.project.files))


@dataclass(frozen=True)
class SubagentRun:
    """A subagent run of a 2.x session, written to a file of its own."""

    agent_id: str
    layout: str  # "2.0": agent-<id>.jsonl beside the session; "2.1": <session>/subagents/
    lines: list[bytes]

    def path(self, project_dir: Path, session_id: str) -> Path:
        name = f"agent-{self.agent_id}.jsonl"
        if self.layout == "2.1":
            return project_dir / session_id / "subagents" / name
        return project_dir / name


def iter_transcript_lines(
    rng: random.Random,
    target_size: int,
    *,
    session_id: str | None = None,
    project: Project | None = None,
    start_ms: int | None = None,
    single_prompt: bool = False,
    runs: list[SubagentRun] | None = None,
) -> Iterator[bytes]:
    """The lines (each ending in a newline) of one transcript of about target_size bytes:
    prompts, assistant messages with text and tool_use blocks, tool results, usage, now and
    then a summary line, a meta caveat or a file-history snapshot. single_prompt: one prompt
    and its answer only, a session too short to summarize. Lazy, so a benchmark can stream
    a transcript of any size. runs: given a list, the session starts subagent runs now and
    then, in the layout of its Claude Code version (chosen among 1.x, 2.0.x and 2.1.x): a 1.x
    run is written inline, 2.x runs are appended to runs (with, in 2.0.x, a Warmup run)."""
    project = project or rng.choice(PROJECTS)
    session_id = session_id or _uuid(rng)
    if start_ms is None:
        start_ms = _BASE_MS + _rand(rng, 0, 60 * 24 * 3600 * 1000)
    session = _Session(rng, project, session_id, start_ms, runs=runs)
    if runs is not None and session.layout == "2.0":
        session.warmup_run()
    written = 0

    def emit(line: bytes) -> bytes:
        nonlocal written
        written += len(line)
        return line

    def enough() -> bool:
        return written >= target_size

    first_prompt = session.prompt(_PROMPTS)
    if rng.random() < 0.15:
        title = first_prompt.split(".")[0][:70].rstrip(" ,")
        summary = {"type": "summary", "summary": title, "leafUuid": _uuid(rng)}
        yield emit(_dumps(summary))
    if rng.random() < 0.2:
        caveat = (
            "Caveat: The messages below were generated by the user while running local "
            "commands. DO NOT respond to these messages or otherwise consider them in your "
            "response unless the user explicitly asks you to."
        )
        message = {"role": "user", "content": caveat}
        yield emit(session.event("user", 0, message=message, isMeta=True))
    if rng.random() < 0.3:
        snapshot = {
            "type": "file-history-snapshot",
            "messageId": _uuid(rng),
            "snapshot": {"trackedFileBackups": {}, "timestamp": _iso(session.now)},
            "isSnapshotUpdate": False,
        }
        yield emit(_dumps(snapshot))

    # Bigger sessions mostly have bigger tool outputs, not just more turns.
    largest_output = max(4_000, min(150_000, target_size // 5))
    prompts = 0
    while prompts == 0 or (not single_prompt and (prompts < 2 or written < target_size)):
        output_size = round(math.exp(rng.uniform(math.log(800), math.log(largest_output))))
        prompt = first_prompt if prompts == 0 else session.prompt(_FOLLOW_UPS)
        for line in session.exchange(prompt, output_size, 8, enough):
            yield emit(line)
        prompts += 1
        if not single_prompt and rng.random() < 0.03:
            # An interruption: Claude Code answers it with a message of its own making.
            interrupted = {
                "role": "user",
                "content": [{"type": "text", "text": ("[Request interrupted by user]")}],
            }
            yield emit(session.event("user", 2_000, message=interrupted))
            synthetic = {
                "id": _uuid(rng),
                "type": "message",
                "role": "assistant",
                "model": "<synthetic>",
                "content": [{"type": "text", "text": "No response requested."}],
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
            yield emit(session.event("assistant", 10, message=synthetic))


def generate_transcript_bytes(rng: random.Random, target_size: int, **options: Any) -> bytes:
    """One whole transcript in memory; options as for iter_transcript_lines."""
    return b"".join(iter_transcript_lines(rng, target_size, **options))


def corrupt(rng: random.Random, lines: list[bytes], bad_lines: int = 3) -> list[bytes]:
    """lines with bad_lines unreadable lines slipped into the middle: a line cut short, bytes
    that are not UTF-8, a merge-conflict marker. The parser skips them and calls the result
    partial."""
    if not lines:
        return lines
    first_good = lines[len(lines) // 2]
    garbage = [
        first_good[: max(1, len(first_good) // 2)].rstrip(b"\n") + b"\n",
        b"\xff\xfe\x00garbage\x00\n",
        b"<<<<<<< HEAD\n",
        b"{not json at all\n",
    ]
    out = list(lines)
    low, high = max(1, len(out) // 3), max(2, 2 * len(out) // 3)
    for i in range(bad_lines):
        out.insert(_rand(rng, low, high), garbage[i % len(garbage)])
    return out


def generate_not_transcript_bytes(rng: random.Random, target_size: int) -> bytes:
    """A JSONL file that is not a transcript: application log records without a 'type'."""
    levels = ("debug", "info", "info", "info", "warning", "error")
    lines = []
    written = 0
    n = 0
    while written < target_size:
        n += 1
        record = {
            "ts": _iso(_BASE_MS + n * 1_500),
            "level": rng.choice(levels),
            "logger": rng.choice(("app.http", "app.db", "app.jobs")),
            "msg": rng.choice(_CODE).strip() or "ok",
            "request_id": _uuid(rng),
        }
        line = _dumps(record)
        written += len(line)
        lines.append(line)
    return b"".join(lines)


def plan_sample_kinds(count: int, seed: int = 0) -> list[SampleKind]:
    """Which of count samples is which: about 5% one-prompt sessions; from 20 samples on, one
    corrupt transcript (two from 100 on); from 50 on, exactly one file that is not a
    transcript. The rest are normal sessions."""
    rng = random.Random(seed)
    kinds: list[SampleKind] = ["normal"] * count
    corrupt_count = 0 if count < 20 else 1 if count < 100 else 2
    foreign = 1 if count >= 50 else 0
    short = round(count * 0.05)
    special: list[SampleKind] = []
    special += ["not_transcript"] * foreign
    special += ["corrupt"] * corrupt_count
    special += ["short"] * short
    for index, kind in zip(rng.sample(range(count), len(special)), special, strict=True):
        kinds[index] = kind
    return kinds


def write_sample_transcripts(
    folder: Path,
    count: int,
    *,
    seed: int = 0,
    sizes: SizeDistribution = default_sizes,
    subagents: bool = True,
) -> list[Path]:
    """Write count sample sessions into folder/<project-dir>/<session-id>.jsonl, laid out as
    ~/.claude/projects/ is; the mix of kinds is plan_sample_kinds(count, seed). subagents: the
    sessions start subagent runs now and then, written as each Claude Code version writes them
    (inline in 1.x, agent-<id>.jsonl beside the session in 2.0.x, <session>/subagents/ in
    2.1.x). Returns the paths of the main transcripts in that order. The same seed and sizes
    write the same bytes."""
    paths = []
    made: set[Path] = set()
    for index, kind in enumerate(plan_sample_kinds(count, seed)):
        rng = random.Random(seed * 1_000_003 + index)
        project = rng.choice(PROJECTS)
        session_id = _uuid(rng)
        size = sizes(rng)
        runs: list[SubagentRun] | None = [] if subagents else None
        if kind == "not_transcript":
            data = generate_not_transcript_bytes(rng, min(size, 50 * KB))
            runs = None
        else:
            lines = list(
                iter_transcript_lines(
                    rng,
                    size,
                    session_id=session_id,
                    project=project,
                    single_prompt=kind == "short",
                    runs=runs,
                )
            )
            if kind == "corrupt":
                lines = corrupt(rng, lines, bad_lines=_rand(rng, 2, 5))
            data = b"".join(lines)
        target = folder / project.dir_name / f"{session_id}.jsonl"
        files = [(target, data)]
        files += [(run.path(target.parent, session_id), b"".join(run.lines)) for run in runs or ()]
        for path, content in files:
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            path.write_bytes(content)
        paths.append(target)
    return paths
