"""What `ExecutionProcess.spawn` leaves for `start`, without a process: for tests of the daemon's side of the
protocol that feed the child's lines themselves."""

from __future__ import annotations


class SpawnedChild:
    """A child process that never needs killing here."""

    pid = 4242
    returncode = None

    def kill(self) -> None:
        pass

    async def wait(self) -> int:
        return 0
