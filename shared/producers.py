"""Producer namespaces: the team or virtual key a batch producer credential is issued for.

A scoped producer credential may publish items only under `<p>.batch.items.ns.<kind>.<id>.<job>` and read result
notices only under `<p>.batch.out.ns.<kind>.<id>.…` (shared/permissions.py); nats-server enforces that, so the
subject an item arrived on says whose credential sent it. The batch service attributes an item to the owner
of that namespace and to nobody else: a field inside the message cannot claim another team or key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.governance import ID_PATTERN
from shared.schemas.chat import Caller
from shared.subjects import NAMESPACE_KINDS as KINDS
from shared.subjects import Subjects

Kind = Literal["team", "key"]


@dataclass(frozen=True, slots=True, order=True)
class Namespace:
    """`team.<team id>` or `key.<key id>`: two subject tokens, so an id never reaches into the job id's token."""

    kind: Kind
    id: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"a producer namespace is a team or a key, not {self.kind!r}")
        if not ID_PATTERN.fullmatch(self.id):
            raise ValueError(f"{self.id[:80]!r} is not a {self.kind} id ([A-Za-z0-9][A-Za-z0-9_-]{{0,62}})")

    @property
    def name(self) -> str:
        """The namespace as it appears in subjects, seed file names and `--namespace` options (`team.ml`)."""
        return f"{self.kind}.{self.id}"

    @classmethod
    def parse(cls, text: str) -> Namespace:
        """`team.ml` → Namespace("team", "ml"); ValueError for anything else."""
        kind, _, ident = text.partition(".")
        if kind not in KINDS:
            raise ValueError(f"{text[:80]!r} is not a producer namespace (team.<id> or key.<id>)")
        return cls(kind, ident)  # type: ignore[arg-type]  # checked against KINDS just above

    def owns(self, caller: Caller) -> bool:
        """Whether a job of `caller` (the key that created it) belongs to this namespace."""
        if self.kind == "team":
            return bool(caller.team) and caller.team == self.id
        return caller.key_id == self.id


def owner_of(name: str) -> Namespace | None:
    """The namespace named by the subject tokens `name` (`team.ml`), None if they name none."""
    try:
        return Namespace.parse(name)
    except ValueError:
        return None


def may_notify(subjects: Subjects, subject: str, caller: Caller | None) -> bool:
    """Whether a job of `caller` may send its result notices to `subject`: a result subject outside every
    namespace, or one of a namespace that owns the job; never another team's or key's (its producers trust
    what arrives there). A job whose owner is not known (None) reaches no namespace."""
    owner = subjects.batch_out_namespace(subject)
    if owner is None:
        return False
    if not owner:
        return True
    namespace = owner_of(owner)
    return namespace is not None and caller is not None and namespace.owns(caller)
