"""What happened to a client in a round: one enum, used by clients, the server and the tables.

Clients send the status as a number (Flower's metric records hold numbers only): ``code``
and :meth:`Status.from_code` are the one translation. Being a ``StrEnum``, a status compares
equal to its name and is written as that name in ``clients.csv``.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    OK = "ok"  # trained everything asked
    REDUCED = "reduced"  # trained less to stay within its energy budget or battery
    DECLINED = "declined"  # could not afford any training this round
    UNAVAILABLE = "unavailable"  # not reachable this round (battery empty, offline in its trace)
    FAILED = "failed"  # raised, or never replied
    DROPPED = "dropped"  # trained, then dropped out before replying
    NONFINITE = "nonfinite"  # replied with NaN/inf weights (excluded)
    STRAGGLER = "straggler"  # replied after the deadline / beyond the first k (excluded)
    # asynchronous mode (server.mode = "async"); appended, so the codes above keep their numbers
    LOST = "lost"  # trained, then went offline before its update arrived (its energy is spent, its update lost)
    STALE = "stale"  # arrived more server steps late than server.async.max_staleness allows (excluded)

    @property
    def code(self) -> float:
        return float(list(Status).index(self))

    @classmethod
    def from_code(cls, code: float) -> Status:
        members = list(cls)
        i = int(code)
        return members[i] if 0 <= i < len(members) else cls.FAILED

    @property
    def trained(self) -> bool:
        return self in (Status.OK, Status.REDUCED)


__all__ = ["Status"]
