"""Rewrite deploy/nats/gatehouse-auth.conf and its copy in deploy/k8s/gatehouse.yaml from shared/permissions.py.

Run after adding a subject or changing a role: `python deploy/nats/regenerate.py` (a unit test fails
until the shipped files match what the code generates).
"""

from __future__ import annotations

from pathlib import Path

from gatehouse.natsconf import authorization_block
from shared.permissions import ROLES
from shared.subjects import Subjects

REPO = Path(__file__).resolve().parents[2]
AUTH = REPO / "deploy" / "nats" / "gatehouse-auth.conf"
K8S = REPO / "deploy" / "k8s" / "gatehouse.yaml"


def main() -> None:
    old = AUTH.read_text()
    header = "".join(line for line in old.splitlines(True) if line.startswith("#"))
    refs = {role: f"$GATEHOUSE_NKEY_{role.upper()}" for role in ROLES}
    new = header + authorization_block(Subjects("gh"), refs)
    AUTH.write_text(new)
    k8s = K8S.read_text()
    old_block = "".join("    " + line if line.strip() else line for line in old.splitlines(True))
    new_block = "".join("    " + line if line.strip() else line for line in new.splitlines(True))
    if old_block not in k8s:
        raise SystemExit(f"{K8S}: the embedded gatehouse-auth.conf does not match the old file; edit it by hand")
    K8S.write_text(k8s.replace(old_block, new_block))


if __name__ == "__main__":
    main()
