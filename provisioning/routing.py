"""Which of a client's members a request tries, best first: its schema's `routing` section.

**Weights** name backends, and a backend is a host: a member's weight is the weight of its
host (its `prewarm.host` label). Among the idle members of the warmest tier available, one
is picked at random in proportion to its weight. Hosts the weights do not name weigh
nothing while a named host has an idle member of that tier; when none has, the usual order
(warmest tier first, then member id) serves, so weights never refuse a request. No positive
weight on any member's host (none given, all zero, or only other names): the usual order.

The random pick is an exponential race (each member draws Exp(weight), the smallest wins),
so the order can be fixed before the lease book says which members are idle: the first
idle member of the race is distributed in proportion to the weights of the idle ones.

**Affinity** keeps requests with one key together, by rendezvous (highest-random-weight)
hashing, weighted by the same host weights, so a key moves only when its member or host goes
away, and keys spread over hosts in proportion to their weights:

- `session`: the key picks a member among all of the client's; it serves the request even
  when another request holds it (affinity is sharing the member), unless the apply step is
  releasing or pausing it, when the key's next member serves;
- `client`: as `session`, with the client id as the key (all its requests on one member);
- `host`: the key picks a host, then any idle member there in the usual order (the key's
  next host when none is idle);
- `none`, or no key: the weights alone.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from provisioning.runtime.base import LABEL_HOST, Member
from provisioning.schema_model import Routing

# How warm a tier is: the order in which idle members serve a request.
CLAIM_ORDER = {"active": 0, "shadow": 1, "cold": 2}

# The real path's source of randomness; tests pass a seeded one instead.
_RANDOM = random.Random()


@dataclass(frozen=True)
class Route:
    """The members one request tries, best first.

    `shared`: the first one not being released or paused serves, even when another request
    holds it (member affinity); otherwise the first idle one does."""

    members: tuple[Member, ...]
    shared: bool


def route_request(
    members: Iterable[Member],
    routing: Routing,
    client_id: str,
    affinity_key: str | None,
    rng: random.Random | None = None,
) -> Route:
    """The order in which `members` (one client's) should serve a request (module doc)."""
    members = list(members)
    weights = member_weights(members, routing.weights)
    key = client_id if routing.affinity == "client" else affinity_key
    if key is not None and routing.affinity in ("session", "client"):
        ranked = rendezvous(key, [m.id for m in members], weights)
        by_id = {m.id: m for m in members}
        return Route(tuple(by_id[member_id] for member_id in ranked), shared=True)
    if key is not None and routing.affinity == "host":
        hosts = {_host_key(m): weights.get(m.id, 0.0) for m in members}
        rank = {host: i for i, host in enumerate(rendezvous(key, list(hosts), hosts))}
        ordered = sorted(members, key=lambda m: (rank[_host_key(m)], *_usual(m)))
        return Route(tuple(ordered), shared=False)
    return Route(tuple(weighted_order(members, weights, rng or _RANDOM)), shared=False)


def member_weights(
    members: Iterable[Member], host_weights: Mapping[str, float]
) -> dict[str, float]:
    """Each member's weight (its host's, 0 for a host not named), by member id; empty when
    no member's host has a positive weight (then weights play no part)."""
    weights = {m.id: _weight_of(m, host_weights) for m in members}
    return weights if any(w > 0 for w in weights.values()) else {}


def weighted_order(
    members: Iterable[Member], weights: Mapping[str, float], rng: random.Random
) -> list[Member]:
    """Warmest tier first; within a tier, members with a weight by an exponential race
    (the first is drawn in proportion to its weight), then the others by id."""

    # Drawn in id order, so a seeded generator gives a repeatable order.
    race = {
        m.id: rng.expovariate(weights[m.id])
        for m in sorted(members, key=lambda m: m.id)
        if weights.get(m.id, 0.0) > 0
    }

    def order(member: Member) -> tuple[int, int, float, str]:
        if member.id in race:
            return CLAIM_ORDER[member.tier], 0, race[member.id], member.id
        return CLAIM_ORDER[member.tier], 1, 0.0, member.id

    return sorted(members, key=order)


def rendezvous(key: str, items: Sequence[str], weights: Mapping[str, float]) -> list[str]:
    """`items` best first for `key` by weighted highest-random-weight hashing.

    An item's score is -w / ln(u), u uniform in (0, 1) from a hash of (key, item): over many
    keys, item i is best with probability w_i / sum(w), and removing an item moves only the
    keys it was best for. Items without a positive weight follow, unweighted (so with no
    weights at all, plain rendezvous hashing)."""

    def order(item: str) -> tuple[int, float, str]:
        weight = weights.get(item, 0.0)
        log_u = math.log(_uniform(key, item))  # negative: the best has the lowest w / ln(u)
        return (0, weight / log_u, item) if weight > 0 else (1, 1.0 / log_u, item)

    return sorted(items, key=order)


def _uniform(key: str, item: str) -> float:
    """A number in (0, 1) fixed by (key, item), the same in every process."""
    digest = hashlib.blake2b(f"{key}\0{item}".encode(), digest_size=8).digest()
    # 52 bits, so the float is exact: never 0 and never 1 (ln(1) = 0 would divide by zero).
    return ((int.from_bytes(digest, "big") >> 12) + 0.5) / 2.0**52


def _usual(member: Member) -> tuple[int, str]:
    return CLAIM_ORDER[member.tier], member.id


def _host_key(member: Member) -> str:
    return member.labels.get(LABEL_HOST) or ""


def _weight_of(member: Member, host_weights: Mapping[str, float]) -> float:
    host = member.labels.get(LABEL_HOST)
    return float(host_weights.get(host, 0.0)) if host is not None else 0.0
