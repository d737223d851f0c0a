"""`xbn cache`: where the result cache is, what it holds, and emptying it (``xbn.execution.cache``).

Only click is imported at module level, so `xbn --help` stays fast.
"""

from __future__ import annotations

import click


@click.group()
def cache() -> None:
    """The result cache of `xbn run` and `xbn report` (never read by `xbn check`)."""


@cache.command()
def info() -> None:
    """Where the cache is and how many scenario x framework results it holds."""
    from ..execution.cache import ResultCache

    store = ResultCache()
    entries = store.entries()
    size = sum(p.stat().st_size for p in entries)
    click.echo(f"{store.root}: {len(entries)} result(s), {size / 1e6:.1f} MB")


@cache.command()
def clear() -> None:
    """Remove every cached result (the next run re-runs everything)."""
    from ..execution.cache import ResultCache

    store = ResultCache()
    click.echo(f"removed {store.clear()} result(s) from {store.root}", err=True)


COMMANDS = (cache,)
