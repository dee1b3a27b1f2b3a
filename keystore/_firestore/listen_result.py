"""What a listener holds of its query's result, between snapshots.

Only each document's update time is kept: a snapshot hands over the documents
whose update time changed, and those that are gone, decoded from the wire's
protobufs; a document resent unchanged (the emulator resends every document on
every write) costs a comparison, not a decode.
"""

from dataclasses import dataclass, field
from typing import Any

from keystore._firestore.values import decode_fields

Change = tuple[str, dict[str, Any] | None]


@dataclass
class ListenedResult:
    """What a listener knows of its query's result, between snapshots."""

    #: Document id -> update time (ns) of every document in the last snapshot.
    versions: dict[str, int] = field(default_factory=dict)
    #: Changes since the last snapshot: (update time, row), or None if gone.
    pending: dict[str, tuple[int, dict[str, Any]] | None] = field(default_factory=dict)
    #: Ids sent since a RESET (or since the stream started), until the snapshot.
    resent: set[str] | None = field(default_factory=set)
    is_current: bool = False
    #: Reads billed at the next snapshot for the documents of a fresh stream.
    is_fresh: bool = True

    def restart(self, *, resumed: bool) -> None:
        """A new stream. Resumed, it sends what changed since (or a RESET);
        otherwise the whole result comes again, and is billed again."""
        self.reset()
        if resumed:
            self.resent = None
        self.is_fresh = not resumed

    def reset(self) -> None:
        self.resent = set()
        self.pending.clear()
        self.is_current = False

    def put(self, doc_id: str, version: int, document: Any) -> None:
        if self.resent is not None:
            self.resent.add(doc_id)
        if self.versions.get(doc_id) != version:
            self.pending[doc_id] = (version, decode_fields(document.fields))
        else:
            self.pending.pop(doc_id, None)

    def drop(self, doc_id: str) -> None:
        if self.resent is not None:
            self.resent.discard(doc_id)
        self.pending[doc_id] = None

    def size(self) -> int:
        """How many documents the target holds with the pending changes applied."""
        held = set(self.versions) if self.resent is None else set(self.resent)
        for doc_id, entry in self.pending.items():
            if entry is None:
                held.discard(doc_id)
            else:
                held.add(doc_id)
        return len(held)

    def snapshot(self) -> tuple[list[Change], int]:
        """Apply the pending changes: what changed, and the reads it is billed."""
        if self.resent is not None:
            for doc_id in self.versions.keys() - self.resent:
                self.pending.setdefault(doc_id, None)
            self.resent = None
        changes: list[Change] = []
        for doc_id, entry in self.pending.items():
            if entry is None:
                if self.versions.pop(doc_id, None) is not None:
                    changes.append((doc_id, None))
            else:
                self.versions[doc_id] = entry[0]
                changes.append((doc_id, entry[1]))
        self.pending.clear()
        if self.is_fresh:
            self.is_fresh = False
            # Firestore bills a listener's first result whole, and at least one read.
            return changes, max(1, len(self.versions))
        return changes, sum(1 for _, row in changes if row is not None)
