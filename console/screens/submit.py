"""The submit form: command, name, queue, timeout, retries, with inline validation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from gridcore.models import JobSpec


@dataclass(frozen=True)
class Submission:
    """What the form hands back: jobs with their ids (pre-assigned for descriptors) and sweep groups."""

    specs: tuple[JobSpec, ...]
    job_ids: tuple[str, ...] | None = None
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str | None = None  # the descriptor file, if one was loaded

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_QUEUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_timeout(value: str) -> float | None:
    """'' -> None (grid default); '90', '90s', '5m', '2h', '1d' -> seconds; else ValueError."""
    if not value.strip():
        return None
    m = _DURATION.match(value)
    if not m:
        raise ValueError("a number of seconds, or with a unit: 90s, 5m, 2h, 1d")
    seconds = float(m.group(1)) * UNITS[m.group(2).lower()]
    if seconds <= 0:
        raise ValueError("must be more than zero")
    return seconds


def load_descriptor(path: str) -> tuple[Submission | None, str]:
    """Jobs of a descriptor file (sweeps expanded), or every problem it has, one per line."""
    from descriptors import DescriptorError, load_file, to_specs

    try:
        planned = to_specs(load_file(Path(path).expanduser()))
    except DescriptorError as e:
        shown = e.problems[:5] + ([f"… and {len(e.problems) - 5} more"] if len(e.problems) > 5 else [])
        return None, "\n".join(shown)
    # Sweep groups as `grid submit -f` records them (name, throttle, parameter axes).
    groups: dict[str, dict[str, Any]] = {}
    for p in planned:
        if p.spec.group and p.spec.group not in groups:
            axes = {k for k in p.spec.params if not k.startswith("_")}
            groups[p.spec.group] = {"name": p.task or p.spec.group, "max_parallel": p.max_parallel,
                                    "axes": sorted(axes)}
    return Submission(tuple(p.spec for p in planned), tuple(p.job_id for p in planned), groups, path), ""


def validate(values: dict[str, str]) -> tuple[JobSpec | None, dict[str, str]]:
    """The spec the form describes, or the error of each bad field."""
    errors: dict[str, str] = {}
    command = values.get("command", "")
    if not command.strip():
        errors["command"] = "a command is required"
    elif "\x00" in command:
        errors["command"] = "the command contains a NUL byte"
    queue = values.get("queue", "").strip() or "default"
    if not _QUEUE.match(queue):
        errors["queue"] = "letters, digits and _ . : - only (up to 100)"
    timeout = None
    try:
        timeout = parse_timeout(values.get("timeout", ""))
    except ValueError as e:
        errors["timeout"] = str(e)
    retries = 0
    raw = values.get("retries", "").strip()
    if raw:
        if not raw.isdigit():
            errors["retries"] = "a whole number, 0 or more"
        else:
            retries = int(raw)
            if retries > 100:
                errors["retries"] = "at most 100"
    name = values.get("name", "").strip()
    if len(name) > 200:
        errors["name"] = "at most 200 characters"
    if errors:
        return None, errors
    try:
        spec = JobSpec(command=command, name=name or None, queue=queue, timeout=timeout, retries=retries)
    except ValueError as e:
        return None, {"command": str(e)}
    return spec, {}


FIELDS = [
    ("command", "Command", "shell command, e.g. python train.py --epochs 10"),
    ("name", "Name", "optional; defaults to the command"),
    ("queue", "Queue", "default"),
    ("timeout", "Timeout", "optional: 90s, 30m, 2h"),
    ("retries", "Retries", "0"),
    ("descriptor", "File", "or a descriptor file (JSON): its tasks replace the fields above"),
]


class SubmitScreen(ModalScreen[Submission | None]):
    """Dismisses with a valid Submission, or None when abandoned."""

    BINDINGS = [
        Binding("escape", "cancel", "Close", id="submit.close"),
        Binding("ctrl+s", "submit", "Submit", id="submit.submit"),
    ]

    def __init__(self, default_queue: str = "default") -> None:
        super().__init__()
        self.default_queue = default_queue

    def compose(self) -> ComposeResult:
        with Vertical(id="submit-box", classes="modal-box"):
            yield Static(Text("Submit a job", style="bold"))
            for key, label, hint in FIELDS:
                with Horizontal(classes="form-row"):
                    yield Label(label, classes="form-label")
                    yield Input(value=self.default_queue if key == "queue" else "", placeholder=hint,
                                id=f"f-{key}")
                yield Static(id=f"e-{key}", classes="form-error")
            with Horizontal(classes="modal-buttons"):
                yield Button(Text("Submit (ctrl+s)"), variant="primary", id="submit")
                yield Button(Text("Close (esc)"), id="close")

    def on_mount(self) -> None:
        self.query_one("#f-command", Input).focus()

    def values(self) -> dict[str, str]:
        return {key: self.query_one(f"#f-{key}", Input).value for key, _, _ in FIELDS}

    def show_errors(self, errors: dict[str, str], touched: set[str] | None = None) -> None:
        for key, _, _ in FIELDS:
            msg = errors.get(key, "") if touched is None or key in touched else ""
            box = self.query_one(f"#e-{key}", Static)
            box.update(Text(msg))
            box.set_class(bool(msg), "-visible")
            self.query_one(f"#f-{key}", Input).set_class(bool(msg), "-invalid")

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        key = (event.input.id or "").removeprefix("f-")
        if key == "descriptor" or self.values()["descriptor"].strip():
            self.show_errors({})  # the file is read and checked on submit
            return
        _, errors = validate(self.values())
        # Only the field being typed in complains while typing; all of them on submit.
        self.show_errors(errors, touched={key} if key != "command" or event.value else set())

    @on(Input.Submitted)
    def _entered(self, event: Input.Submitted) -> None:
        inputs = list(self.query(Input))
        i = inputs.index(event.input)
        if i + 1 < len(inputs):
            inputs[i + 1].focus()
        else:
            self.action_submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "submit":
            self.action_submit()
        else:
            self.dismiss(None)

    def action_submit(self) -> None:
        values = self.values()
        path = values["descriptor"].strip()
        if path:
            if values["command"].strip():
                self._refuse({"descriptor": "give a command or a descriptor file, not both"})
                return
            submission, problems = load_descriptor(path)
            if submission is None:
                self._refuse({"descriptor": problems})
                return
            self.dismiss(submission)
            return
        spec, errors = validate(values)
        if spec is None:
            self._refuse(errors)
            return
        self.dismiss(Submission((spec,)))

    def _refuse(self, errors: dict[str, str]) -> None:
        self.show_errors(errors)
        first = next(k for k, _, _ in FIELDS if k in errors)
        self.query_one(f"#f-{first}", Input).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)
