"""The kinds of plain data the registry declares: a framework (:class:`FrameworkInfo`), what its
BatchNorm can express (:class:`Capabilities`, :class:`Since`), how users spell it
(:class:`Convention`), its fact tables (:class:`Profile`), its family and weights formats.
Standard library only; ``xbn.frameworks.registry`` holds the instances.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields, replace
from importlib import metadata


def installed(dist_spec: str) -> str | None:
    """The installed version of the first distribution of ``'a|b'`` found, else None."""
    for dist in dist_spec.split("|"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


@dataclass(frozen=True)
class Since:
    """A capability that arrived in a release of ``distribution``: what ``xbn port`` may assume
    from the installed version (package metadata, nothing imported). Inside a worker the
    adapter asks the imported framework itself (a signature), which decides."""

    distribution: str
    version: str
    source: str  # where the version was read (changelog, pull request, docs)

    def installed(self) -> bool:
        """Whether the installed distribution is at least ``version`` (False when absent)."""
        found = installed(self.distribution)
        return found is not None and _release(found) >= _release(self.version)


def _release(version: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0): the leading numeric release segments."""
    parts = []
    for part in version.split("+")[0].split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


@dataclass(frozen=True)
class Capabilities:
    """What the framework's BatchNorm can express; an adapter raises NotApplicable for the rest.

    The defaults (everything) apply to frameworks that declare nothing, such as plugins. A
    field may be a :class:`Since` (a release that brought it): :func:`capabilities` resolves
    it against the installed version; an adapter may probe the framework instead
    (``Adapter.capabilities``).
    """

    cumulative_momentum: bool | Since = True  # momentum=None: cumulative average (torch)
    no_running_stats: bool | Since = True  # can keep no running statistics at all
    scale_without_center: bool | Since = True  # gamma without beta (torch: bias=False)
    center_without_scale: bool | Since = True  # beta without gamma

    @property
    def split_affine(self) -> bool:
        """center and scale are independent switches (not one affine flag)."""
        return bool(self.scale_without_center) and bool(self.center_without_scale)

    def resolved(self) -> Capabilities:
        """Every :class:`Since` replaced by whether the installed version has it."""
        return replace(self, **{f.name: getattr(self, f.name).installed()
                                for f in fields(self) if isinstance(getattr(self, f.name), Since)})


@dataclass(frozen=True)
class Convention:
    """How users spell the BatchNorm constructor: keywords, which way momentum points, axes."""

    id: str
    label: str  # how users name it in prose
    call: str  # the constructor as written in code ({d}: torch's 1/2/3)
    imports: str  # the import line that makes ``call`` work
    momentum_kw: str
    new_batch_weight: bool  # True: momentum is the weight of the new batch (torch)
    epsilon_kw: str
    center_kw: str | None  # with Capabilities.split_affine
    scale_kw: str | None
    affine_kw: str | None  # the one flag for both, without split_affine
    features_kw: str | None  # constructor needs the channel count
    channel_axis: int | None  # fixed channel axis of the batch (None: the ``axis`` keyword)
    axis_default: int  # the channel axis a default layer normalizes
    multi_axis: bool  # the axis keyword accepts several axes
    without_running_stats: str = ""  # how to get track_running_stats=False without the option
    offset_kw: str | None = None  # drops the offset alone, next to affine_kw (torch's bias)


@dataclass(frozen=True)
class Profile:
    """Names of the fact tables in ``xbn/profiles/facts.py`` that describe a framework."""

    semantics: str  # key of profiles.SEMANTICS
    numerics: str | None = None  # key of profiles.NUMERICS (float32 rounding)


@dataclass(frozen=True)
class Format:
    """A weights-file format, read and written by its family's ``state_io`` module."""

    name: str
    family: str
    suffixes: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class Family:
    """A folder ``xbn/adapters/<id>/``: adapters of one ecosystem and, if any, their port code.

    A family with ``formats`` has ``state_io.py`` (read, fresh, layer_info, file_notes); one with
    ``live`` has ``live.py`` (framework_of, bn_layers, runner, load_model).
    """

    id: str
    formats: tuple[Format, ...] = ()
    file_framework: str | None = None  # framework id of a file that does not say which wrote it
    live: bool = False
    model_files: tuple[str, ...] = ()  # suffixes ``xbn verify`` runs with live.load_model
    model_files_label: str = ""

    @property
    def package(self) -> str:
        return f"xbn.adapters.{self.id}"


@dataclass(frozen=True)
class FrameworkInfo:
    id: str
    module: str  # importable adapter module (an undotted name means xbn.adapters.<name>)
    extra: str  # pip extra that installs it: pip install "xbn[<extra>]"
    distributions: tuple[str, ...]  # first installed one gives the version
    requires: tuple[str, ...] = ()  # every one of these must be installed ("a|b": either)
    env: dict[str, str] = field(default_factory=dict)  # set in its worker before import
    description: str = ""
    family: str = ""  # a key of FAMILIES
    capabilities: Capabilities = field(default_factory=Capabilities)
    convention: Convention | None = None
    profile: Profile | None = None
