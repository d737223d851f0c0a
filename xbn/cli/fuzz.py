"""``xbn fuzz`` (search for findings with Hypothesis) and ``xbn repro`` (a standalone script).

Hypothesis, pandas and the frameworks are imported inside the commands, never here, so that
``xbn --help`` and ``xbn fuzz --help`` stay instant.
"""

from __future__ import annotations

import click

from .common import fail, framework_ids
from .schema import divergences_option, load_divergences, user_divergences


@click.command()
@click.option("--frameworks", "-f", default=None,
              help="Comma-separated framework ids (default: every installed one).")
@click.option("--budget", type=click.FloatRange(min=1), default=None,
              help="Seconds of wall time for the whole campaign (worker start-up included).")
@click.option("--max-examples", type=click.IntRange(min=1), default=None,
              help="Stop after this many generated scenarios.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Hypothesis seed: the same seed, frameworks and budget repeat a campaign.")
@click.option("--out", "out", default=None,
              help="Folder for each finding's scenario TOML, summary and repro script (default: "
                   "the first of findings, findings-2, ... that is absent or empty). A folder "
                   "that holds files is refused unless --force.")
@click.option("--force", is_flag=True,
              help="Write into an --out folder that already holds files (same names replaced).")
@click.option("--batch", type=click.IntRange(min=1, max=64), default=8, show_default=True,
              help="Scenarios per round trip to each worker.")
@divergences_option
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: seeds SEED, SEED+1, ... spread over Ray actors (xbn.fuzz.ray_engine).")
@click.option("--known", "known", default=None, metavar="FILE",
              help="TOML of causes already reported upstream ([[known]] framework, cause, link): "
                   "counted, not reported again.")
@click.option("--models", is_flag=True,
              help="Fuzz small models (dense/conv -> BN -> activation -> BN, residual adds, a "
                   "frozen BN) built in torch and each -f framework with the same weights; "
                   "report the first BatchNorm where they part (default -f torch,keras,flax).")
@click.option("--address", default=None, help="ray: the cluster (default: a local Ray).")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="ray: campaigns at once, one seed each (default: the cluster's CPUs).")
def fuzz(frameworks: str | None, budget: float | None, max_examples: int | None, seed: int,
         out: str | None, force: bool, batch: int, divergences: str | None, engine: str,
         address: str | None, actors: int | None, known: str | None, models: bool) -> None:
    """Search for scenarios where a framework departs from its own declared profile or hits a
    numerical hazard (NaN/inf, a negative variance, a collapsed variance, a moving mean outside
    its data) that no declared switch, rounding bound or known divergence accounts for; shrink
    each, keep one per framework and root cause, write it to a new folder (never over existing
    files without --force). Exit 1 with findings, 0 without."""
    import sys

    from ..frameworks.registry import FRAMEWORK_IDS, available
    from ..fuzz.output import OutputExists, out_dir

    if budget is not None and max_examples is not None:
        fail("give --budget or --max-examples, not both")
    if models and (engine != "local" or known or divergences or address or actors):
        fail("--models runs in this process against the builders' ported conventions: "
             "--engine, --known, --divergences, --address and --actors do not apply to it")
    if models:  # the model campaign (xbn.fuzz.model_campaign), in this process
        from ..fuzz.model_campaign import run_command

        try:
            sys.exit(run_command(frameworks, budget, max_examples, seed, out, force,
                                 lambda text: click.echo(f"xbn fuzz: {text}", err=True)))
        except ValueError as exc:
            fail(str(exc))
    if engine == "ray":
        from ..fuzz.ray_engine import RayMissing, ray_module

        try:
            ray_module()
        except RayMissing as exc:
            fail(str(exc))
    try:  # before the campaign: a refusal must not cost its budget
        folder = out_dir(out, force)
    except OutputExists as exc:
        fail(str(exc))
    entries = load_divergences(divergences)
    reported = _known(known)
    ids = framework_ids(frameworks) or list(FRAMEWORK_IDS)
    missing = [f for f in ids if not available(f)]
    if missing:
        if frameworks:
            fail(f"not installed: {', '.join(missing)}")
        ids = [f for f in ids if f not in missing]
    if budget is None and max_examples is None:
        budget = 300.0

    from ..fuzz.campaign import Campaign
    from ..fuzz.output import write
    from ..guard.engines.ray_engine import RayStartFailed

    def log(text: str) -> None:
        click.echo(f"xbn fuzz: {text}", err=True)

    log(f"findings will be written to {folder}/" + (" (--force: same names replaced)"
                                                       if force and folder.exists() else ""))
    campaign = Campaign(ids, seed=seed, budget=budget, max_examples=max_examples, batch=batch,
                        shrink_seconds=max(10.0, (budget or 300.0) / 6), log=log)
    if engine == "ray":
        from ..fuzz.ray_engine import RayCampaign

        campaign = RayCampaign(ids, seed=seed, budget=budget, max_examples=max_examples,
                               batch=batch, shrink_seconds=campaign.shrink_seconds, log=log,
                               actors=actors, address=address, divergences=entries)
    command = " ".join(["xbn fuzz", "-f", ",".join(ids), *(
        ["--budget", f"{budget:g}"] if budget is not None else []), *(
        ["--max-examples", str(max_examples)] if max_examples is not None else []),
        "--seed", str(seed), "--batch", str(batch), *(["--known", known] if known else [])])
    campaign.known, campaign.command = reported, command
    with user_divergences(entries):  # rows they cover are no finding
        try:
            findings = campaign.run()
        except RayStartFailed as exc:  # --engine ray: no cluster, or a local Ray that failed
            fail(str(exc))
    for finding in findings:
        versions = campaign.sessions[finding.flag.framework].versions
        for path in write(finding, folder, versions, seed, campaign.k, command):
            click.echo(str(path))
    busy = campaign.seconds - campaign.startup
    overhead = max(0.0, busy - campaign.worker_seconds)
    rates = ", ".join(f"{fw} {r:.1f}/s" for fw, r in sorted(campaign.rates().items()))
    log(f"{campaign.examples} examples in {campaign.seconds:.0f} s (workers' start-up "
        f"{campaign.startup:.0f} s); examples per second per framework: {rates}; fuzzer "
        f"overhead {overhead:.1f} s ({100 * overhead / busy if busy else 0:.0f}% of the search)")
    seen = getattr(campaign, "known_seen", {})
    causes = {f.cause.name for f in findings} | {c for _, c in seen}
    log(f"{campaign.examples} examples; {len(causes)} distinct root cause(s): "
        f"{len(findings)} new finding(s), {len(seen)} already reported (--known)" +
        "".join(f"; {fw} {cause}: {n} hit(s), {reported[(fw, cause)]}"
                for (fw, cause), n in sorted(seen.items())))
    log(f"{len(findings)} finding(s)" + (f" written to {folder}/" if findings else
                                         f"; nothing written (would have gone to {folder}/)"))
    sys.exit(1 if findings else 0)


def _known(path: str | None) -> dict:
    """--known FILE read before the campaign (a bad file: one line, exit 2)."""
    if path is None:
        return {}
    from ..common.strict import StrictError
    from ..fuzz.upstream import load_known

    try:
        return load_known(path)
    except StrictError as exc:
        fail(str(exc))


@click.command()
@click.argument("scenario")
@click.option("--framework", "framework", required=True, help="The framework id to reproduce.")
@click.option("--output", "-o", default=None, help="Write the script here (default: stdout).")
def repro(scenario: str, framework: str, output: str | None) -> None:
    """Write a standalone Python script (only the framework and numpy, no xbn) that replays
    SCENARIO with the framework's own API and prints its values next to the exact ones."""
    from .common import emit, load_scenarios

    ids = framework_ids(framework) or []
    if len(ids) != 1 or ids[0] == "numpy":
        fail("--framework takes one framework id (not numpy)")
    [loaded] = load_scenarios([scenario])
    from ..fuzz.repro import ReproUnsupported, script

    try:
        code = script(loaded, ids[0])
    except ReproUnsupported as exc:
        fail(f"{scenario}: {exc}")
    emit(code, output)


COMMANDS = [fuzz, repro]
