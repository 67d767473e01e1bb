"""The policy registry: every scheduling policy by its CLI name, in one place.

A plain dict written out here (not filled by decorators as modules happen to be
imported), so what ``--scheduler``/``--schedulers`` accept is visible at a glance.
A new policy is one import and one entry below.
"""

from __future__ import annotations

from scheduler.ours import OursPolicy
from scheduler.policies import (
    DefaultPolicy,
    FCFSPolicy,
    LCASDescPolicy,
    LCASPolicy,
    MCPSPolicy,
    Policy,
)

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (DefaultPolicy, FCFSPolicy, LCASPolicy, LCASDescPolicy, MCPSPolicy, OursPolicy)
}


def get_policy(name: str) -> Policy:
    """A fresh policy object by registry name."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}") from None
