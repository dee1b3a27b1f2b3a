"""Firestore's answers that are not failures, as keystore's own exceptions.

The rest of keystore never sees Google's or gRPC's exception classes:
``connection.py`` maps them here once, as httpx maps httpcore's at its
transport. A failure (no answer, an error, a deadline passed) is
``StoreUnavailable``; these are answers.
"""

from keystore.errors import KeyStoreError


class Refused(KeyStoreError):
    """Firestore refused a write, and it changed nothing: a precondition
    failed (the document changed since it was read, or exists already), or
    the commit was aborted by contention."""


class Missing(Refused):
    """Firestore refused a write because a document it needs does not exist."""
