"""The signal registry: every signal type by name.

Built-ins register exactly the way an extension would (an ``imgmatch.signals``
entry point naming a :class:`SignalType` subclass), so the core has no
privileged path. Two kinds are registered: hashes (:class:`SignalType`) and
local features (:class:`LocalSignalType`, the built-in ``orb``). Code that
treats them differently asks :func:`split` or a type's ``kind``, not a name.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import features
from ..errors import SignalError
from ..records import HashValue, hamming
from .base import DIHEDRAL_OPS, Signal, SignalType
from .imagehashes import DHash, PHash
from .learned import OnnxSignal
from .local import ORB, LocalSignalType
from .pdq import PDQ

_REGISTRY: dict[str, Signal] = {}
_LOADED_ENTRY_POINTS = False

#: The hash tier: the global hashes only (``--fast``). Several times faster
#: to ingest, but blind to crops, borders, rotations, screenshots and collages.
HASH_SIGNALS: tuple[str, ...] = ("pdq", "phash", "dhash")
#: The name of the built-in local features (:class:`ORB`), the kind the
#: catalog keeps beside the hashes (``--signals pdq,phash,dhash,orb``).
FEATURES = features.NAME
#: The robust tier: the hashes plus local features.
ROBUST_SIGNALS: tuple[str, ...] = HASH_SIGNALS + (FEATURES,)
#: Signals computed at ingest unless the user names others: the robust tier,
#: because reposts in ads are cropped, framed, stamped and screenshotted.
DEFAULT_SIGNALS: tuple[str, ...] = ROBUST_SIGNALS


def register(signal_type: type[Signal]) -> None:
    """Add a signal type (a class) under its ``name``. The catalog keeps one
    kind of local features beside the hashes: a second is refused."""
    name = signal_type.name
    if name in _REGISTRY and type(_REGISTRY[name]) is not signal_type:
        raise SignalError(f"a different signal is already registered as {name!r}")
    if issubclass(signal_type, LocalSignalType):
        other = [n for n, sig in _REGISTRY.items() if sig.kind == "local" and n != name]
        if other:
            raise SignalError(f"local features are already registered as {other[0]!r}; "
                              f"a collection keeps one kind")
    _REGISTRY[name] = signal_type()


def _load_entry_points() -> None:
    global _LOADED_ENTRY_POINTS
    if _LOADED_ENTRY_POINTS:
        return
    _LOADED_ENTRY_POINTS = True
    from importlib import metadata  # slow to import: only when a name is not built in

    for ep in metadata.entry_points(group="imgmatch.signals"):
        if ep.name not in _REGISTRY:
            register(ep.load())


def signal(name: str) -> Signal:
    """The signal type called ``name``, of either kind; SignalError lists the known ones."""
    if name not in _REGISTRY:
        _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SignalError(
            f"unknown signal {name!r}; known signals: {', '.join(names(kind=None))}") from None


def get(name: str) -> SignalType:
    """The hash signal called ``name`` (what most callers compare values of)."""
    sig = signal(name)
    if not isinstance(sig, SignalType):
        raise SignalError(f"{name!r} is local features, not a hash: it has no hex values")
    return sig


def local(name: str = FEATURES) -> LocalSignalType:
    """The local-features signal called ``name`` (by default the built-in)."""
    sig = signal(name)
    if not isinstance(sig, LocalSignalType):
        raise SignalError(f"{name!r} is a hash, not local features")
    return sig


def split(signal_names: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Names as (hash signals, local features), order kept, each checked."""
    chosen = tuple(signal_names)
    kinds = {name: signal(name).kind for name in chosen}
    return (tuple(n for n in chosen if kinds[n] == "hash"),
            tuple(n for n in chosen if kinds[n] == "local"))


def names(kind: str | None = "hash") -> list[str]:
    """The registered signals of a kind (``hash``, ``local``, None: every one)."""
    _load_entry_points()
    return sorted(name for name, sig in _REGISTRY.items() if kind in (None, sig.kind))


def describe() -> dict[str, dict[str, int]]:
    """Every hash signal by name, with its ``bits`` and inclusive match
    ``threshold``: what a program that imports only the package checks a
    signal's name against and judges a distance by (nothing is loaded: a
    learned signal lacking its model is described all the same)."""
    return {name: {"bits": sig.bits, "threshold": sig.threshold}
            for name in names() for sig in (get(name),)}


def parse_list(text: str | None) -> tuple[str, ...]:
    """'pdq,phash' -> ('pdq', 'phash'), each checked; None -> the defaults."""
    if not text:
        return DEFAULT_SIGNALS
    chosen = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    for name in chosen:
        signal(name)
    if not chosen:
        raise SignalError("no signal named; give a comma-separated list such as pdq,phash")
    return chosen


def parse_hash(text: str, signal: str = "pdq") -> HashValue:
    """A hash of ``signal`` written in hex (PDQ: 64 digits, the form partners
    exchange); SignalError says what is wrong with it."""
    return get(signal).from_hex(text)


for _builtin in (PDQ, PHash, DHash, OnnxSignal, ORB):
    register(_builtin)

__all__ = ["Signal", "SignalType", "LocalSignalType", "ORB", "signal", "local", "split",
           "HashValue", "hamming", "DIHEDRAL_OPS", "DEFAULT_SIGNALS",
           "HASH_SIGNALS",
           "FEATURES", "ROBUST_SIGNALS",
           "register", "get", "names", "describe", "parse_list", "parse_hash", "PDQ",
           "PHash", "DHash",
           "OnnxSignal"]
