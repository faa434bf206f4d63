"""NKey credentials of the gatehouse roles: a seed file per role (0600, in a 0700 dir), made once and kept; and
of the batch producers scoped to a team or key (`producers/<kind>.<id>.nk` beside them).

nats-server is given only the public keys; a service gets the path of its own role's seed file.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nkeys

from shared.permissions import ROLES, Role
from shared.producers import Namespace, owner_of

SEED_SUFFIX = ".nk"


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) if missing, and make it readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


@dataclass(frozen=True, slots=True)
class RoleKey:
    role: Role
    seed_file: Path
    public_key: str


def new_seed() -> bytes:
    """A fresh user NKey seed (`SU…`)."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed


def public_key(seed_file: Path) -> str:
    """The public key (`U…`) of the seed in `seed_file`; a clear error naming the file if it is not one."""
    try:
        seed = bytearray(seed_file.read_bytes().strip())
        pair = nkeys.from_seed(seed)
        key: str = pair.public_key.decode()
    except (OSError, nkeys.NkeysError, ValueError) as exc:
        raise ValueError(
            f"{seed_file} does not hold a NATS user NKey seed ({type(exc).__name__}); delete it to make a new one"
        ) from exc
    pair.wipe()
    if not key.startswith("U"):
        raise ValueError(f"{seed_file} holds an NKey seed that is not a user key")
    return key


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data + b"\n")


def ensure_credentials(directory: Path, roles: Iterable[Role] = ROLES) -> dict[Role, RoleKey]:
    """The key of every role, making the seed files missing under `directory` (existing ones are kept)."""
    private_dir(directory)
    keys: dict[Role, RoleKey] = {}
    for role in roles:
        path = directory / f"{role}{SEED_SUFFIX}"
        if not path.exists():
            _write_new(path, new_seed())
        path.chmod(0o600)
        keys[role] = RoleKey(role, path, public_key(path))
    return keys


ADMIN_KEY_FILE = "admin-api.key"


def ensure_admin_key(directory: Path) -> Path:
    """The file holding the admin API key (`gh-admin-…`, made once, 0600): `gatehouse keys …` reads it."""
    private_dir(directory)
    path = directory / ADMIN_KEY_FILE
    if not path.exists():
        _write_new(path, ("gh-admin-" + secrets.token_urlsafe(32)).encode())
    path.chmod(0o600)
    return path


PRODUCERS_DIR = "producers"


@dataclass(frozen=True, slots=True)
class ProducerKey:
    namespace: Namespace
    seed_file: Path
    public_key: str


def producer_seed_file(directory: Path, namespace: Namespace) -> Path:
    return directory / PRODUCERS_DIR / f"{namespace.name}{SEED_SUFFIX}"


def ensure_producer(directory: Path, namespace: Namespace) -> tuple[ProducerKey, bool]:
    """The producer credential of `namespace` under the credentials `directory`, made if missing (True: made now)."""
    path = producer_seed_file(directory, namespace)
    private_dir(path.parent)
    made = not path.exists()
    if made:
        _write_new(path, new_seed())
    path.chmod(0o600)
    return ProducerKey(namespace, path, public_key(path)), made


def producer_keys(directory: Path) -> dict[Namespace, ProducerKey]:
    """Every producer credential issued under `directory` (files whose name is no namespace are ignored)."""
    found: dict[Namespace, ProducerKey] = {}
    folder = directory / PRODUCERS_DIR
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob(f"*{SEED_SUFFIX}")):
        namespace = owner_of(path.name[: -len(SEED_SUFFIX)])
        if namespace is not None:
            found[namespace] = ProducerKey(namespace, path, public_key(path))
    return found


def revoke_producer(directory: Path, namespace: Namespace) -> bool:
    """Delete the producer credential of `namespace` (False: there was none); nats-server forgets it on reload."""
    path = producer_seed_file(directory, namespace)
    if not path.exists():
        return False
    path.unlink()
    return True
