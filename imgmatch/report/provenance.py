"""What a report or export was made with: imgmatch's version, each signal's
version and threshold, the evidence model and the scores that decide.

A lead handed on must say how it was found: a report read a year later, or
by a partner, names the algorithms and cut-offs that made its links, so that
anyone can tell whether a newer imgmatch would see the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from .. import signals as registry
from ..errors import SignalError
from .. import evidence
from ..match import THRESHOLDS


def model_digest() -> str:
    """A short digest of the evidence model's fitted weights and of the rules
    around them (:data:`imgmatch.evidence.SCORING_SETTINGS`): it changes
    whenever a calibration or a rule changes what a score means."""
    settings = [(name, getattr(evidence, name)) for name in evidence.SCORING_SETTINGS]
    text = repr((sorted(evidence.MODELS.items()), settings))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def made_with(signal_names: Iterable[str], version: str) -> dict[str, Any]:
    """The provenance block of a report over a collection holding these signals."""
    signals: dict[str, dict[str, Any]] = {}
    for name in sorted(set(signal_names)):
        try:
            signals[name] = registry.signal(name).describe()
        except SignalError:  # a plug-in signal no longer installed: say so, do not fail
            signals[name] = {"version": None, "kind": "not installed"}
    return {"imgmatch": version, "signals": signals, "model": model_digest(),
            "scores": dict(THRESHOLDS)}


def describe(made: dict[str, Any]) -> str:
    """One line of text for the formats that have no place for structure."""
    parts = []
    for name, info in made.get("signals", {}).items():
        if info.get("kind") == "local":
            parts.append(f"{name} v{info['version']} (local features, verified from "
                         f"support {info.get('threshold')})")
        elif info.get("threshold") is not None:
            parts.append(f"{name} v{info['version']} (within {info['threshold']} bits)")
        else:
            parts.append(f"{name} v{info.get('version')}")
    scores = made.get("scores", {})
    return (f"imgmatch {made.get('imgmatch')}; signals: {', '.join(parts) or 'none'}; "
            f"evidence model {made.get('model')}; links from score {scores.get('link')}, "
            f"clusters from {scores.get('cluster')}")
