"""``xbn fuzz --models``: Hypothesis draws small models (``xbn.fuzz.models``), each is built in
torch (A) and every other framework (B) with the same weights, and ``xbn.fuzz.model_verdict``
says where they part and whose it is.

One Hypothesis run per report, as the single-layer campaign (``xbn.fuzz.campaign``) does: the
property "no pair shows a reportable verdict whose signature we have not seen" fails on the
first new one (a ``finding``: (framework, the first BN's root cause); an ``outside`` BatchNorm
difference; a ``port`` mistake, which would be a builder's bug); from then on only that
framework is built and an example fails only when it shows the same signature, so Hypothesis
shrinks towards fewer blocks, plainer inputs and the head of every list without wandering off to
another cause. Everything runs in this process (the captures need the live models): torch,
Keras and JAX are imported once, and every spec is built and captured once in torch.

Each report is written as ``<framework>-<cause>.json`` (the spec: ``python -m
xbn.fuzz.model_campaign FILE -f FRAMEWORK`` replays it) and ``.md`` (the first differing BN,
its cause, the verdicts per BN, versions, and the commands), plus, for a finding, the one-layer
scenario that shows it alone as ``.toml`` (``xbn run`` replays it).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .model_verdict import ModelPair, ModelVerdict

VERSIONS = ("torch", "keras", "tensorflow", "tf-keras", "jax", "flax", "numpy", "hypothesis")


class _OutOfTime(BaseException):
    """Budget spent: a BaseException so that Hypothesis lets it through without a replay."""


class _Found(Exception):
    """The property failed: an example shows the report's signature (or a new one)."""


@dataclass
class ModelReport:
    spec: dict
    verdict: ModelVerdict
    shrink_calls: int = 0
    hits: int = 1  # examples that showed this signature before shrinking


@dataclass
class ModelCampaign:
    frameworks: list[str]  # B ids (torch, A, is always built)
    seed: int = 0
    budget: float | None = None
    max_examples: int | None = None
    shrink_seconds: float = 60.0
    log: Callable[[str], None] = lambda _text: None
    reports: dict[tuple[str, str], ModelReport] = field(default_factory=dict)
    kinds: Counter = field(default_factory=Counter)  # verdict kinds over every judged pair
    examples: int = 0
    seconds: float = 0.0
    command: str = ""

    def _time_left(self) -> float:
        return float("inf") if self.budget is None else self.budget - (time.monotonic() - self.t0)

    def _examples_left(self) -> int:
        return 10**9 if self.max_examples is None else self.max_examples - self.examples

    def run(self) -> list[ModelReport]:
        self.t0 = time.monotonic()
        attempt = 0
        try:
            while self._time_left() > 0 and self._examples_left() > 0:
                if not self._round(attempt):
                    break
                attempt += 1
        finally:
            self.seconds = time.monotonic() - self.t0
        return list(self.reports.values())

    def judge(self, spec: dict, frameworks: list[str]) -> list[ModelVerdict]:
        pair = ModelPair(spec)
        return [pair.judge(fw) for fw in frameworks]

    def _round(self, attempt: int) -> bool:
        """One Hypothesis run; True when it may go on (a new report was kept, or none was
        found before the examples ran out for another reason than the budget)."""
        from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings

        from .models import model_spec

        state: dict = {"target": None, "best": None, "calls": 0, "since": None}

        @settings(max_examples=max(1, self._examples_left()), deadline=None, database=None,
                  phases=(Phase.generate, Phase.shrink), verbosity=Verbosity.quiet,
                  suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
        @seed(self.seed * 1_000_003 + attempt)
        @given(model_spec())
        def property_(spec: dict) -> None:
            if self._time_left() <= 0 or (state["since"] is not None and
                                          time.monotonic() - state["since"] > self.shrink_seconds):
                raise _OutOfTime
            target = state["target"]
            if target is None:
                if self._examples_left() <= 0:
                    raise _OutOfTime
                self.examples += 1
                verdicts = self.judge(spec, self.frameworks)
                self.kinds.update(v.kind for v in verdicts)
                new = None
                for v in verdicts:
                    if not v.reported:
                        continue
                    if v.signature in self.reports:
                        self.reports[v.signature].hits += 1
                    elif new is None:
                        new = v
                if new is None:
                    return
                state["target"], state["since"] = new.signature, time.monotonic()
                state["b"] = new.b or new.framework
                self.log(f"{new.kind} {new.framework} {new.cause} at {new.layer} after "
                         f"{self.examples} examples; shrinking")
                found = new
            else:
                state["calls"] += 1
                found = next((v for v in self.judge(spec, [state["b"]])
                              if v.signature == target), None)
                if found is None:
                    return
            state["best"] = ModelReport(json.loads(json.dumps(spec)), found)
            raise _Found

        try:
            property_()
        except (_OutOfTime, _Found):
            pass
        except Exception as exc:  # noqa: BLE001 - Hypothesis' Flaky when a replay differs
            self.log(f"round {attempt}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        if state["best"] is None:
            return state["target"] is None and self._time_left() > 0 and \
                self._examples_left() > 0 and self.max_examples is None and attempt < 1000
        report = state["best"]
        report.shrink_calls = state["calls"]
        self.reports[report.verdict.signature] = report
        v = report.verdict
        self.log(f"shrunk {v.framework} {v.cause} in {report.shrink_calls} calls to "
                 f"{len(report.spec['blocks'])} block(s), first differing BN {v.layer}")
        return True


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in VERSIONS:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def slug(verdict: ModelVerdict) -> str:
    return f"model-{verdict.framework}-{verdict.cause}".replace("_", "-")


def write(report: ModelReport, out: Path, command: str) -> list[Path]:
    """``<slug>.json`` (the spec), ``<slug>.md`` and, for a finding, ``<slug>-layer.toml``."""
    from .output import to_toml

    out.mkdir(parents=True, exist_ok=True)
    v, name = report.verdict, slug(report.verdict)
    where = "" if out in (Path(), Path(".")) else f"{out.as_posix().rstrip('/')}/"
    spec_path = out / f"{name}.json"
    spec_path.write_text(json.dumps(report.spec, indent=1) + "\n", encoding="utf-8")
    paths = [spec_path]
    replay = f"python -m xbn.fuzz.model_campaign {where}{name}.json -f {_b(v, report)}"
    layer_cmd = ""
    if v.kind == "finding" and v.scenario is not None:
        toml = out / f"{name}-layer.toml"
        document = layer_document(v.scenario, name + "-layer")
        toml.write_text(to_toml(document, f"{v.layer} of {name}.json alone (xbn fuzz "
                                          "--models)"), encoding="utf-8")
        paths.append(toml)
        layer_cmd = f"xbn run {where}{toml.name} --frameworks numpy,torch,{v.framework}"
    headline = {"finding": "a BatchNorm finding", "outside": "outside BatchNorm (not a "
                "BatchNorm finding)", "port": "a porting mistake (the model builders': "
                "an xbn bug)"}[v.kind]
    lines = [f"# {name}: {headline}", "",
             f"- first differing BatchNorm: **{v.layer or 'none'}**"
             + (f" ({v.mode} pass, {v.quantity}: max_abs {v.max_abs:.3g} > tolerance "
                f"{v.tolerance:.3g})" if v.max_abs is not None and v.tolerance is not None
                else ""),
             f"- cause: `{v.cause}`: {v.text}",
             f"- frameworks: torch (A) against {_b(v, report)} (B); "
             f"{len(report.spec['blocks'])} block(s), layout {report.spec['layout']}, "
             f"{report.hits} example(s) showed it, shrunk in {report.shrink_calls} call(s)",
             "", "## Per BatchNorm", "", "| A | B | own results | input |", "|---|---|---|---|"]
    lines += [f"| {p['a']} | {p['b']} | {p['verdict']} | {p['input']} |" for p in v.layers]
    lines += ["", "## Replay", "", "```", replay, *([layer_cmd] if layer_cmd else []), "```",
              "", f"Found by: `{command}`", "", "## Versions", ""]
    lines += [f"- {k} {val}" for k, val in versions().items()]
    lines += ["", "## The model spec", "", "```json", json.dumps(report.spec, indent=1), "```"]
    md = out / f"{name}.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths + [md]


def layer_document(scenario, name: str) -> dict:
    """The one-layer scenario (``model_verdict.one_layer``: set_weights, then one call) as a
    scenario document ``xbn run`` loads."""
    lay = scenario.layer
    steps = []
    for step in scenario.steps:
        if step.op == "set_weights":
            steps.append({"op": "set_weights", **step.values})
        else:
            steps.append({"op": "call", "input": step.input, "training": bool(step.training)})
    return {"schema": 1, "name": name, "title": scenario.title,
            "layer": {"features": lay.features, "layout": lay.layout, "momentum": lay.momentum,
                      "epsilon": lay.epsilon},
            "inputs": {k: v.tolist() for k, v in scenario.inputs.items()}, "steps": steps}


def _b(v: ModelVerdict, report: ModelReport) -> str:
    return v.b or v.framework


def run_command(frameworks: str | None, budget: float | None, max_examples: int | None,
                seed: int, out: str | None, force: bool, log: Callable[[str], None]) -> int:
    """What ``xbn fuzz --models`` does: check the frameworks and the folder (ValueError: bad
    input, before any budget is spent), run the campaign, write the reports, print the summary;
    returns the exit status (1: a BatchNorm finding or a porting mistake, 0: neither)."""
    from .models import builder
    from .output import OutputExists, out_dir

    ids = [f.strip() for f in (frameworks or "torch,keras,flax").split(",") if f.strip()]
    others = [f for f in dict.fromkeys(ids) if f != "torch"]
    if not others:
        raise ValueError("--models compares torch (A) with other frameworks: name at least "
                         "one besides torch (keras, tf-keras, flax)")
    for fw in ["torch", *others]:
        builder(fw)  # ValueError: no model builder for it
    try:
        folder = out_dir(out, force, default="model-findings")
    except OutputExists as exc:
        raise ValueError(str(exc)) from None
    if budget is None and max_examples is None:
        budget = 300.0
    command = " ".join(["xbn fuzz --models", "-f", ",".join(["torch", *others]), *(
        ["--budget", f"{budget:g}"] if budget is not None else []), *(
        ["--max-examples", str(max_examples)] if max_examples is not None else []),
        "--seed", str(seed)])
    log(f"models: torch (A) against {', '.join(others)}; reports go to {folder}/")
    campaign = ModelCampaign(others, seed=seed, budget=budget, max_examples=max_examples,
                             shrink_seconds=max(10.0, (budget or 300.0) / 6), log=log,
                             command=command)
    reports = campaign.run()
    for report in reports:
        for path in write(report, folder, command):
            print(path)
    rate = campaign.examples / campaign.seconds if campaign.seconds else 0.0
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(campaign.kinds.items()))
    log(f"{campaign.examples} models in {campaign.seconds:.0f} s ({rate:.2f} models/s, "
        f"{len(others)} pair(s) each); verdicts per pair: {kinds or 'none'}")
    findings = [r for r in reports if r.verdict.kind == "finding"]
    for r in reports:
        v = r.verdict
        log(f"{v.kind}: {v.framework} {v.cause} at {v.layer} ({r.hits} example(s))")
    log(f"{len(findings)} BatchNorm finding(s), {len(reports) - len(findings)} other report(s)"
        + (f" written to {folder}/" if reports else f"; nothing written (would have gone to "
                                                    f"{folder}/)"))
    return 1 if any(r.verdict.kind in ("finding", "port") for r in reports) else 0


def main(argv: list[str] | None = None) -> int:
    """Replay a written spec: ``python -m xbn.fuzz.model_campaign SPEC.json -f keras[,flax]``;
    prints each pair's verdict as JSON. Exit 1 when a pair is reportable, 2 on bad input."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m xbn.fuzz.model_campaign")
    parser.add_argument("spec")
    parser.add_argument("-f", "--frameworks", default="keras,flax")
    args = parser.parse_args(argv)
    try:
        spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
        pair = ModelPair(spec)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"{args.spec}: not a model spec ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    reported = False
    for fw in [f for f in args.frameworks.split(",") if f and f != "torch"]:
        v = pair.judge(fw)
        reported |= v.reported
        print(json.dumps(v.to_dict(), indent=1))
    return 1 if reported else 0


if __name__ == "__main__":
    sys.exit(main())
