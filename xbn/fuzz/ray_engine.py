"""``xbn fuzz --engine ray``: the campaign's seeds spread over Ray actors.

Each actor is one long-lived process that runs a whole :class:`~xbn.fuzz.campaign.Campaign`
(its own persistent xbn worker per framework, ``xbn.execution.session``) under its own seed:
actor ``i`` of ``n`` runs seed ``seed + i`` with the same budget, and ``--max-examples`` is split
between them. Actor 0 therefore runs exactly the campaign ``xbn fuzz --seed SEED`` runs on one
machine, and the others search further with the next seeds. The findings come back to the
driver, which keeps one per (framework, root cause) with ``campaign.deduplicate``, the function
a single campaign uses, in actor order: the same signature found by two actors is one finding,
with the symptoms of both.

The actors need xbn and the frameworks installed on their nodes (a local Ray started for the
campaign, bound to 127.0.0.1, uses this environment). Ray is started as the version matrix's
Ray engine starts it (``xbn.guard.engines.ray_engine.start``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..guard.engines.ray_engine import RayMissing, RayStartFailed, ray_module, start
from .campaign import Campaign, Finding, deduplicate

__all__ = ["RayCampaign", "RayMissing", "RayStartFailed", "ray_module"]


class _Versions:
    """What the CLI reads of a campaign's session: the framework's versions."""

    def __init__(self, versions: dict):
        self.versions = versions


class CampaignActor:
    """One seed's campaign in a long-lived Ray actor; returns what the driver merges."""

    def run(self, frameworks: list[str], options: dict, divergences: tuple = ()) -> dict:
        from contextlib import nullcontext

        from ..profiles.divergences import user_divergences

        campaign = Campaign(frameworks, **options)
        with user_divergences(divergences) if divergences else nullcontext():
            findings = campaign.run()
        return {"findings": findings, "examples": campaign.examples,
                "seconds": campaign.seconds, "startup": campaign.startup,
                "worker_seconds": campaign.worker_seconds,
                "known_seen": dict(getattr(campaign, "known_seen", {})),
                "versions": {fw: s.versions for fw, s in campaign.sessions.items()},
                "worker": {fw: (s.examples, s.seconds) for fw, s in campaign.sessions.items()}}


@dataclass
class RayCampaign:
    """The same face as ``Campaign`` for the CLI (run, findings, sessions' versions, rates,
    timings), its work done by ``actors`` Ray actors."""

    frameworks: list[str]
    seed: int = 0
    budget: float | None = None
    max_examples: int | None = None
    batch: int = 8
    k: float = 16.0
    shrink_seconds: float = 60.0
    log: Callable[[str], None] = lambda _text: None
    actors: int | None = None
    address: str | None = None
    cpus: int | None = None
    divergences: tuple = ()  # the user's known divergences (--divergences), in every actor
    known: dict = field(default_factory=dict)  # --known: signature -> link, in every actor
    known_seen: dict = field(default_factory=dict)  # hits of those, all actors together
    command: str = ""
    findings: list[Finding] = field(default_factory=list)
    examples: int = 0
    seconds: float = 0.0
    startup: float = 0.0
    worker_seconds: float = 0.0
    sessions: dict = field(default_factory=dict)
    _worker: dict = field(default_factory=dict)

    def run(self) -> list[Finding]:
        t0 = time.monotonic()
        ray, _ = start(self.address, self.cpus)  # the matrix engine's start: 127.0.0.1 only
        try:
            n = self.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
            per = None if self.max_examples is None else max(1, -(-self.max_examples // n))
            self.log(f"ray: {n} actor(s), seeds {self.seed}..{self.seed + n - 1}")
            actor_cls = ray.remote(num_cpus=1)(CampaignActor)
            actors = [actor_cls.remote() for _ in range(n)]
            refs = [a.run.remote(self.frameworks, {
                "seed": self.seed + i, "budget": self.budget, "max_examples": per,
                "batch": self.batch, "k": self.k, "shrink_seconds": self.shrink_seconds,
                **({"known": self.known, "command": self.command} if self.known else {})},
                self.divergences) for i, a in enumerate(actors)]
            results = ray.get(refs)
        finally:  # stops the local Ray started here; disconnects from a cluster
            ray.shutdown()
        found: list[Finding] = []
        for r in results:  # actor order: actor 0's findings first, as on one machine
            found += r["findings"]
            self.examples += r["examples"]
            self.worker_seconds += r["worker_seconds"]
            self.startup = max(self.startup, r["startup"])
            for fw, versions in r["versions"].items():
                self.sessions.setdefault(fw, _Versions(versions))
            for signature, hits in r["known_seen"].items():
                self.known_seen[signature] = self.known_seen.get(signature, 0) + hits
            for fw, (examples, seconds) in r["worker"].items():
                e, s = self._worker.get(fw, (0, 0.0))
                self._worker[fw] = (e + examples, s + seconds)
        self.findings = deduplicate(found)
        self.seconds = time.monotonic() - t0
        return self.findings

    def rates(self) -> dict[str, float]:
        """Examples per second of each framework's workers, all actors together."""
        return {fw: e / s for fw, (e, s) in self._worker.items() if s}
