"""One doctor check's outcome, and how the whole report prints and exits."""

from __future__ import annotations

from enum import StrEnum
from typing import TextIO

from pydantic import BaseModel


class Status(StrEnum):
    """A check's outcome."""

    OK = "OK"
    WARN = "WARN"  # worth knowing, not wrong (e.g. no public address behind NAT)
    FAIL = "FAIL"


class Check(BaseModel):
    """What one check found; `fix` says what to do when it is not OK."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


def ok(name: str, detail: str) -> Check:
    """A check that passed."""
    return Check(name=name, status=Status.OK, detail=detail)


def warn(name: str, detail: str, fix: str | None = None) -> Check:
    """A check with something worth knowing, and a fix if there is one."""
    return Check(name=name, status=Status.WARN, detail=detail, fix=fix)


def fail(name: str, detail: str, fix: str) -> Check:
    """A failed check, with its fix."""
    return Check(name=name, status=Status.FAIL, detail=detail, fix=fix)


def print_report(checks: list[Check], out: TextIO) -> int:
    """Print one line per check (and its fix); the exit status: 1 if any failed, else 0."""
    for check in checks:
        print(f"{check.status.value:4}  {check.name}: {check.detail}", file=out)
        if check.fix and check.status is not Status.OK:
            print(f"      fix: {check.fix}", file=out)
    failed = [c.name for c in checks if c.status is Status.FAIL]
    print(f"\n{len(failed)} problem(s)" + (f": {', '.join(failed)}" if failed else ""), file=out)
    return 1 if failed else 0
