"""Progress on stderr while workers run: a live display per framework on a terminal (rich), a
plain line per finished scenario and framework otherwise, because a CI log keeps lines but not
a redrawn display, and a silent run of several minutes looks hung.

Both take the runner's ``Progress`` events. rich is imported only when a live display starts,
so ``xbn --help`` never loads it.
"""

from __future__ import annotations

import sys
import threading
import time

import click


def _step_text(step: int | None, steps: int, op: str, repeat: int) -> str:
    if step is None:
        return ""
    times = f" ×{repeat}" if repeat > 1 else ""
    return f"{step + 1}/{steps} {op}{times}"


class PlainProgress:
    """One line per finished scenario and framework, one per framework that ends or fails."""

    def __call__(self, event) -> None:
        fw, kind = event.framework, event.kind
        if kind == "scenario":
            line = (f"[{event.done}/{event.count}] {fw}: {event.scenario} done "
                    f"({event.elapsed:.1f} s)")
        elif kind == "done":
            line = f"{fw}: finished {event.count} scenario(s) in {event.elapsed:.1f} s"
        elif kind == "error":
            line = f"{fw}: {event.message}"
        elif kind == "unavailable":
            line = f"{fw}: unavailable ({event.message})"
        else:
            return
        click.echo(f"xbn: {line}", err=True)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None


class LiveProgress:
    """A table redrawn in place: per framework its state, scenario k/n, the scenario and step
    running now, and the time since its worker started. Starts at the first event, stops at
    "finished" (or on leaving a ``with`` block) and leaves the last table on screen."""

    def __init__(self) -> None:
        self._rows: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._live = None

    def __call__(self, event) -> None:
        if event.kind == "finished":
            self.stop()
            return
        with self._lock:
            row = self._rows.setdefault(event.framework, {
                "state": "queued", "done": 0, "count": event.count, "scenario": "", "step": "",
                "since": None, "elapsed": None})
            if event.kind in ("start", "step", "scenario") and row["since"] is None:
                row["since"] = time.monotonic() - event.elapsed
            if event.kind == "unavailable":
                row.update(state="unavailable", step=event.message)
            elif event.kind == "start":
                row["state"] = "running"
            elif event.kind == "step":
                row.update(state="running", scenario=event.scenario,
                           step=_step_text(event.step, event.steps, event.op, event.repeat))
            elif event.kind == "scenario":
                row.update(done=event.done, scenario=event.scenario, step="done")
            elif event.kind in ("done", "error"):
                row.update(state="done" if event.kind == "done" else "error",
                           elapsed=event.elapsed, scenario="",
                           step=event.message if event.kind == "error" else "")
        self._start()

    def _start(self) -> None:
        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self, console=Console(stderr=True), refresh_per_second=4,
                              redirect_stdout=False)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    def __rich__(self):
        from rich.table import Table

        colour = {"running": "cyan", "done": "green", "error": "red", "unavailable": "yellow",
                  "queued": "dim"}
        table = Table(box=None, pad_edge=False, header_style="bold")
        for name in ("framework", "state", "scenarios", "scenario", "step", "elapsed"):
            table.add_column(name, justify="right" if name in ("scenarios", "elapsed") else "left")
        now = time.monotonic()
        with self._lock:
            for fw, r in self._rows.items():
                elapsed = r["elapsed"] if r["elapsed"] is not None else (
                    now - r["since"] if r["since"] is not None else None)
                table.add_row(fw, f"[{colour[r['state']]}]{r['state']}[/]",
                              f"{r['done']}/{r['count']}", r["scenario"], r["step"],
                              f"{elapsed:.0f} s" if elapsed is not None else "")
        return table

    def __enter__(self) -> LiveProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def progress_display(quiet: bool = False, terminal: bool | None = None):
    """The display for this stderr: live on a terminal, plain lines otherwise, None if quiet."""
    if quiet:
        return None
    if terminal is None:
        terminal = sys.stderr.isatty()
    return LiveProgress() if terminal else PlainProgress()
