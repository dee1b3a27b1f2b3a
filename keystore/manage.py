"""Key management: every write to key rows and owner documents, in one place.

The CLI and the admin API call these through ``ApiKeyStore``. Each change is
one atomic commit that takes effect once however often it is sent
(``_firestore/commits.py``); a change that depends on what a row holds is
read, planned and committed with the precondition that the row has not
changed since. Then the sync view is told once (``_wrote``), so that this
process answers from the change at once.
"""

import asyncio
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from keystore._firestore.conditional import Read
from keystore._firestore.documents import KeyCollection
from keystore._firestore.errors import Missing, Refused
from keystore._firestore.usage import DayDocuments
from keystore._firestore.writes import Create, Delete, Update
from keystore.errors import (
    InsufficientCredits,
    InvalidRow,
    KeyDisabled,
    KeyExpired,
    KeyNotFound,
    MalformedKey,
    StoreUnavailable,
)
from keystore.keys import (
    hash_key,
    imported_key_id,
    is_document_id,
    is_importable,
    new_key,
    new_key_id,
    parse_key_id,
)
from keystore.limits.document import read_doc
from keystore.limits.edits import (
    LIMIT_FIELDS,
    STATE_FIELDS,
    LimitEdit,
    LimitView,
    limit_edit,
    limit_view,
)
from keystore.limits.lease import debit
from keystore.limits.values import RateLimit, Refill
from keystore.models import (
    ApiKey,
    BrokenRow,
    ImportResult,
    NewKey,
    Usage,
    oldest_first,
    parse_row,
    read_row,
)
from keystore.owners import Owners
from keystore.settings import Settings
from keystore.sync import KeyView

#: Fields that ``update`` may change.
EDITABLE = frozenset({"name", "scopes", "disabled", "expires_at", "owner"})
#: Tries of a change while other writers (leases, usage counts) change the
#: row between its read and its commit.
_TRIES = 20
_BACKOFF_SECONDS = 0.01


class KeyManager:
    """Creates, reads, changes and deletes keys, and sets limits."""

    def __init__(
        self,
        settings: Settings,
        rows: KeyCollection,
        view: KeyView,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self._rows = rows
        self._days = DayDocuments(rows)
        self.owners = Owners(settings, rows, self._days, clock=clock)
        self._view = view
        self._clock = clock

    # -- keys -----------------------------------------------------------------

    async def create(
        self,
        *,
        name: str,
        scopes: Iterable[str] = (),
        expires_at: datetime | None = None,
        owner: str | None = None,
        rate_limit: RateLimit | None = None,
        credits: int | None = None,
        refill: Refill | None = None,
        funded_by: ApiKey | None = None,
        most_live: int | None = None,
    ) -> NewKey:
        """Make a key, store its hash, and return it; the plaintext is not kept.

        ``credits`` is the balance now; a ``refill`` replaces it at the start of
        each period (without ``credits``, the first refill applies at once).
        ``funded_by``: the key whose own credits pay for the new key's, in the
        same commit (InsufficientCredits if it holds fewer). ``most_live``:
        the owner's cap on live keys (TooManyKeys if it has that many)."""
        if owner is not None:
            check_owner(owner)
        made = self._new(name=name, scopes=scopes, expires_at=expires_at)
        record = replace(
            made.record,
            owner=owner,
            rate_limit=rate_limit,
            credits=credits,
            refill=refill,
        )
        row = record.to_row()
        stamp = None
        if credits is not None:
            # The balance is keystore's and holds for the period it is set in.
            row["credits_written"] = credits
            stamp = "credits_set_at"
        create = Create(self._rows.path(record.id), row, stamp=stamp)
        funder = funded_by if funded_by is not None and credits else None
        cap = (
            (owner, most_live) if owner is not None and most_live is not None else None
        )
        what = f"create of key {record.id}"
        if funder is None and cap is None:
            at = await self._rows.apply([create], what=what, cause="admin")
        else:
            at = await self._create_with(create, what, funder, credits or 0, cap)
        self._wrote(record.id, record, at)
        return NewKey(record=record, key=made.key)

    async def _create_with(
        self,
        create: Create,
        what: str,
        funder: ApiKey | None,
        credits: int,
        cap: tuple[str, int] | None,
    ) -> int:
        """Commit ``create`` atomically with the debit of ``credits`` from
        ``funder``'s own pool (where its limits live), and the owner's slot
        under its cap (owners.py), each as read just before."""
        for attempt in range(_TRIES):
            writes: list[Create | Update] = [create]
            if funder is not None:
                writes.append(await self._debit(funder, credits))
            if cap is not None:
                writes.append(await self.owners.slot(*cap))
            try:
                return await self._rows.apply(writes, what=what, cause="admin")
            except Refused:  # a document read changed since
                await _backoff(attempt)
        raise StoreUnavailable(f"Too many writers for the {what}; retry.")

    async def _debit(self, funder: ApiKey, credits: int) -> Update:
        doc_id = funder.limits_in or funder.id
        path = self._rows.path(doc_id)
        read = await self._rows.read(path, cause="admin")
        if read.fields is None:
            raise _no_key(doc_id)
        sets = debit(doc_id, read.fields, credits, now=read.read_time)
        if sets is None:
            raise InsufficientCredits(funder.id, credits)
        return Update(path, sets, after=read)

    async def get(self, key_id: str) -> ApiKey | BrokenRow:
        """One row by key id; KeyNotFound if there is none."""
        row = await self._rows.get(key_id, cause="admin")
        if row is None:
            raise KeyNotFound(f"No key with id '{key_id}'.")
        return read_row(key_id, row)

    async def readable(self, key_id: str) -> ApiKey:
        """One row by key id; KeyNotFound if there is none, InvalidRow if it
        cannot be read."""
        record = await self.get(key_id)
        if isinstance(record, BrokenRow):
            raise InvalidRow(record.id, record.field, record.problem)
        return record

    async def list_keys(
        self,
        *,
        disabled: bool = False,
        expired: bool = False,
        scope: str | None = None,
        owner: str | None = None,
    ) -> list[ApiKey | BrokenRow]:
        """Rows, oldest first; with a filter, only the readable rows that match.
        With ``owner``, only that owner's rows are read (owners.py), broken
        ones too: they count against the owner's cap on live keys."""
        if owner:
            rows = await self.owners.keys(owner)
        else:
            listing = await self._rows.all(cause="list")
            rows = [read_row(key_id, row) for key_id, row in listing.rows]
        now = self._clock()
        if disabled or expired or scope:
            rows = [
                row
                for row in rows
                if isinstance(row, ApiKey)
                and (not disabled or row.disabled)
                and (not expired or row.is_expired(now))
                and (not scope or scope in row.scopes)
            ]
        return oldest_first(rows)

    async def update(
        self, key_id: str, changes: Mapping[str, Any], limits: Mapping[str, Any]
    ) -> ApiKey:
        """Change ``EDITABLE`` fields and limits (``set_limits``'s) of a key,
        in one commit. With no changes, the row is read and returned."""
        unknown = set(changes) - EDITABLE
        if unknown:
            raise ValueError(f"Field '{sorted(unknown)[0]}' cannot be changed.")
        sets = dict(changes)
        if "scopes" in sets:
            sets["scopes"] = list(dict.fromkeys(sets["scopes"]))
        if sets.get("owner") is not None:
            check_owner(sets["owner"])
        path = self._rows.path(key_id)

        def plan(read: Read) -> tuple[dict[str, Any], str | None]:
            if not limits:
                return sets, None
            edit = limit_edit(key_id, read.fields, **limits)
            return {**sets, **edit.sets}, _balance_stamp(edit)

        read, fields, at = await self._change(path, plan, missing=_no_key(key_id))
        try:
            record = parse_row(key_id, fields)
        except InvalidRow:
            if at is not None:
                self._wrote(key_id, None, at)
            raise
        if at is not None:
            self._wrote(key_id, record, at)
        return record

    async def revoke(self, key_id: str, *, owner: str | None = None) -> None:
        """Delete the key's row; KeyNotFound if there is none (with ``owner``:
        none of that owner's, read and deleted unchanged)."""
        if owner is None:
            at = await self._rows.delete(key_id, cause="admin")
            self._wrote(key_id, None, at)
            return
        path = self._rows.path(key_id)
        for attempt in range(_TRIES):
            read = await self._rows.read(path, cause="admin")
            _check_owned(key_id, read, owner)
            try:
                at = await self._rows.apply(
                    [Delete(path, after=read)],
                    what=f"delete of key {key_id}",
                    cause="admin",
                )
            except Refused:  # changed (a use counted, say) since the read
                await _backoff(attempt)
                continue
            self._wrote(key_id, None, at)
            return
        raise StoreUnavailable(f"Too many writers on key {key_id}; retry.")

    async def rotate(
        self,
        key_id: str,
        *,
        grace: timedelta,
        expires_at: datetime | None = None,
        most_live: int | None = None,
        owner: str | None = None,
        terms: Callable[[ApiKey], datetime | None] | None = None,
    ) -> NewKey:
        """A new key with the old one's name, scopes, owner and limits; the old
        key stays valid for ``grace``, then expires by itself. Its limits move
        to the new row whole, leases and all, so that both keys spend from one
        balance; the old row points there. Both rows are written atomically.
        ``most_live``: the owner's cap on live keys, which the old key counts
        in until it expires (TooManyKeys). ``owner``: as that owner, who may
        rotate its own keys only (KeyNotFound), and only while they work
        (KeyDisabled, KeyExpired). ``terms``: given the old key, the new one's
        expiry in place of ``expires_at``, or an exception that refuses."""
        path = self._rows.path(key_id)
        made: NewKey | None = None
        for attempt in range(_TRIES):
            read = await self._rows.read(path, cause="admin")
            if owner is not None:
                _check_owned(key_id, read, owner)
            if read.fields is None:
                raise _no_key(key_id)
            old = parse_row(key_id, read.fields)
            if owner is not None:
                if old.disabled:
                    raise KeyDisabled()
                if old.is_expired(self._clock()):
                    raise KeyExpired()
            if made is None:
                made = self._new(
                    name=old.name,
                    scopes=old.scopes,
                    expires_at=terms(old) if terms else expires_at,
                    rotated_from=old.id,
                )
            new_id = made.record.id
            moved = {
                name: read.fields[name]
                for name in (*LIMIT_FIELDS, *STATE_FIELDS)
                if read.fields.get(name) is not None
            }
            row = {**made.record.to_row(), **moved}
            if old.owner is not None:
                row["owner"] = old.owner
            if old.limits_in is not None:
                row["limits_in"] = old.limits_in  # they live elsewhere already
            old_until = self._clock() + grace
            if old.expires_at is not None:
                old_until = min(old_until, old.expires_at)
            old_changes: dict[str, Any] = {
                "expires_at": old_until,
                "rotated_to": new_id,
            }
            if moved:
                old_changes.update(dict.fromkeys(moved), limits_in=new_id)
            writes: list[Create | Update] = [
                Create(self._rows.path(new_id), row),
                Update(path, old_changes, after=read),
            ]
            if most_live is not None and old.owner is not None:
                ends_now = grace <= timedelta(0) and not old.is_expired(self._clock())
                adding = 0 if ends_now else 1
                writes.append(
                    await self.owners.slot(old.owner, most_live, adding=adding)
                )
            try:
                at = await self._rows.apply(
                    writes,
                    what=f"rotation of key {key_id}",
                    cause="admin",
                )
            except Missing:
                raise _no_key(key_id) from None
            except Refused:
                await _backoff(attempt)
                continue
            new = parse_row(new_id, row)
            self._wrote(new_id, new, at)
            self._wrote(
                key_id, parse_row(key_id, _applied(read.fields, old_changes)), at
            )
            return NewKey(record=new, key=made.key)
        raise StoreUnavailable(f"Too many writers on key {key_id}; retry.")

    async def import_keys(
        self,
        keys: Iterable[tuple[str, str]],
        *,
        scopes: Iterable[str] = (),
        expires_at: datetime | None = None,
    ) -> ImportResult:
        """Store the hashes of existing plaintext keys, given as (name, key) pairs.

        A key's row id is derived from the key, so importing it again changes
        nothing. Keys of keystore's own format keep their id.
        """
        created: list[str] = []
        existing: list[str] = []
        rejected = 0
        scopes = tuple(scopes)
        for name, key in keys:
            try:
                key_id = parse_key_id(key, self.settings.prefix)
            except MalformedKey:
                if not is_importable(key):
                    rejected += 1
                    continue
                key_id = imported_key_id(key)
            record = self._record(
                key_id=key_id, key=key, name=name, scopes=scopes, expires_at=expires_at
            )
            at = await self._rows.create(key_id, record.to_row(), cause="admin")
            if at is None:
                existing.append(key_id)
            else:
                created.append(key_id)
                self._wrote(key_id, record, at)
        return ImportResult(created=created, existing=existing, rejected=rejected)

    async def usage(self, key_id: str, *, days: int = 30) -> Usage:
        """A key's total uses, last use, and uses per day for the last ``days``."""
        record = await self.get(key_id)
        count = record.usage_count if isinstance(record, ApiKey) else 0
        last = record.last_used_at if isinstance(record, ApiKey) else None
        return Usage(
            key_id=key_id,
            total=count,
            last_used_at=last,
            days=await self._days.of_key(key_id, days),
        )

    # -- limits ---------------------------------------------------------------

    async def set_limits(self, key_id: str, **limits: Any) -> ApiKey:
        """Set or remove (None) a key's ``rate_limit``, ``credits`` (left) and
        ``refill``; limits not named stay as they are."""
        return await self.update(key_id, {}, limits)

    async def set_owner_limits(self, owner: str, **limits: Any) -> LimitView:
        """Set or remove an owner's limits (its document is made if need be)."""
        check_owner(owner)
        path = f"{self.settings.owners_collection}/{owner}"

        def plan(read: Read) -> tuple[dict[str, Any], str | None]:
            edit = limit_edit(owner, read.fields, kind="Owner document", **limits)
            return edit.sets, _balance_stamp(edit)

        read, fields, at = await self._change(path, plan, missing=None)
        when = read.read_time if at is None else at / 1e9
        return limit_view(read_doc(owner, fields, kind="Owner document"), when)

    async def limits(self, key_id: str) -> LimitView:
        """Where a key's limits and credits stand now."""
        read = await self._rows.read(self._rows.path(key_id), cause="admin")
        if read.fields is None:
            raise _no_key(key_id)
        moved = parse_row(key_id, read.fields).limits_in
        if moved is not None:
            read = await self._rows.read(self._rows.path(moved), cause="admin")
            if read.fields is None:
                raise _no_key(moved)
        return limit_view(read_doc(key_id, read.fields or {}), read.read_time)

    async def owner_limits(self, owner: str) -> LimitView | None:
        """Where an owner's limits and credits stand; None if it has none."""
        check_owner(owner)
        path = f"{self.settings.owners_collection}/{owner}"
        read = await self._rows.read(path, cause="admin")
        if read.fields is None:
            return None
        return limit_view(
            read_doc(owner, read.fields, kind="Owner document"), read.read_time
        )

    # -- helpers --------------------------------------------------------------

    async def _change(
        self,
        path: str,
        plan: Callable[[Read], tuple[dict[str, Any], str | None]],
        *,
        missing: Exception | None,
    ) -> tuple[Read, dict[str, Any], int | None]:
        """Read the document at ``path``, plan the fields to set from it, and
        commit them if it has not changed since: (the read, the fields after,
        the commit time or None if nothing was to change). ``missing``: raised
        if there is no document (None: the change makes it)."""
        for attempt in range(_TRIES):
            read = await self._rows.read(path, cause="admin")
            if read.fields is None and missing is not None:
                raise missing
            sets, stamp = plan(read)
            if not sets and stamp is None:
                return read, read.fields or {}, None
            try:
                at = await self._rows.apply(
                    [Update(path, sets, after=read, stamp=stamp)],
                    what=f"change of {path}",
                    cause="admin",
                )
            except Refused:
                await _backoff(attempt)
                continue
            fields = _applied(read.fields or {}, sets)
            if stamp is not None:
                fields[stamp] = datetime.fromtimestamp(at / 1e9, UTC)
            return read, fields, at
        raise StoreUnavailable(f"Too many writers on {path}; retry.")

    def _wrote(self, key_id: str, record: ApiKey | None, at: int) -> None:
        """This process changed a row, committed at ``at`` (ns)."""
        self._view.remember(key_id, record, at)

    def _new(
        self,
        *,
        name: str,
        scopes: Iterable[str],
        expires_at: datetime | None,
        rotated_from: str | None = None,
    ) -> NewKey:
        key_id = new_key_id()
        key = new_key(self.settings.prefix, key_id)
        record = self._record(
            key_id=key_id,
            key=key,
            name=name,
            scopes=scopes,
            expires_at=expires_at,
            rotated_from=rotated_from,
        )
        return NewKey(record=record, key=key)

    def _record(
        self,
        *,
        key_id: str,
        key: str,
        name: str,
        scopes: Iterable[str],
        expires_at: datetime | None,
        rotated_from: str | None = None,
    ) -> ApiKey:
        now = self._clock()
        if expires_at is None and self.settings.default_expiry is not None:
            expires_at = now + self.settings.default_expiry
        return ApiKey(
            id=key_id,
            name=name,
            scopes=tuple(dict.fromkeys(scopes)),
            expires_at=expires_at,
            created_at=now,
            hash=hash_key(key),
            rotated_from=rotated_from,
        )


def check_owner(owner: str) -> None:
    """ValueError unless ``owner`` can name an owner document."""
    if len(owner) > 200 or not is_document_id(owner):
        raise ValueError(
            "An owner is 1 to 200 characters, without '/', and not '.', '..' "
            "or '__...__' (a Firestore document id)."
        )


def _applied(fields: Mapping[str, Any], sets: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` with ``sets`` applied (None deletes a field)."""
    after = {**fields, **sets}
    return {name: value for name, value in after.items() if value is not None}


def _balance_stamp(edit: LimitEdit) -> str | None:
    return "credits_set_at" if edit.stamp_balance else None


def _check_owned(key_id: str, read: Read, owner: str) -> None:
    """KeyNotFound unless the row read is ``owner``'s: another owner's key is
    answered as one that does not exist, before anything else is read of it."""
    if read.fields is None or read.fields.get("owner") != owner:
        raise _no_key(key_id)


def _no_key(key_id: str) -> KeyNotFound:
    return KeyNotFound(f"No key with id '{key_id}'.")


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, _BACKOFF_SECONDS * (attempt + 1)))
