"""Usage day documents: one per key and UTC day, under the key's row.

``<collection>/<key id>/usage/<YYYY-MM-DD>`` holds ``count`` (uses) and
``credits`` (spent) that day, and, for reports by owner, ``owner`` and
``key_id``. They are what customers are billed from, so they outlive their
key: revoking a key deletes its row, not its day documents, and uses counted
before a revocation are still written, to the day document alone.
"""

from dataclasses import dataclass
from typing import Any

from google.cloud.firestore_v1.types import (
    Document,
    DocumentMask,
    DocumentTransform,
    Precondition,
    StructuredQuery,
    Value,
    Write,
)

from keystore._firestore.commits import Commit
from keystore._firestore.documents import KeyCollection, equal
from keystore._firestore.errors import Missing, Refused
from keystore._firestore.values import decode_fields, encode_fields, encode_value
from keystore.errors import StoreUnavailable

#: The subcollection of a key's row that holds its day documents.
USAGE_SUBCOLLECTION = "usage"

_REQUEST_TIME = DocumentTransform.FieldTransform.ServerValue.REQUEST_TIME


@dataclass(frozen=True, slots=True)
class DayCount:
    """One day document: a key's uses and credits spent on a UTC day."""

    key_id: str
    day: str
    uses: int
    credits: int


class DayDocuments:
    """Writes and reads the day documents of the rows of ``rows``."""

    def __init__(self, rows: KeyCollection) -> None:
        self._rows = rows
        self._connection = rows.connection

    def _path(self, key_id: str, day: str) -> str:
        return self._connection.path(self._rows.path(key_id), USAGE_SUBCOLLECTION, day)

    async def add(
        self,
        key_id: str,
        day: str,
        count: int,
        credits: int = 0,
        *,
        owner: str | None = None,
        write_id: str,
        insist: bool = False,
    ) -> bool:
        """Add ``count`` uses and ``credits`` spent on ``day`` to a row and its
        day document, atomically; False if the row is gone, when the day
        document alone is written.

        Increments are applied by Firestore, so any number of processes may add
        at once; sent again with the same ``write_id``, it changes nothing more
        (the row-less write reuses it: the first was refused, so it never
        landed).
        """
        await self._connection.ensure_open(insist=insist)
        what = f"usage write of key {key_id}"
        day_document = self._day_write(key_id, day, count, credits, owner)
        row = self._row_write(key_id, count, credits)
        try:
            await self._rows.commits.send(
                Commit([row, day_document], what, write_id), insist=insist
            )
        except Missing:
            await self._rows.commits.send(
                Commit([day_document], what, write_id), insist=insist
            )
            self._rows.writes["usage"] += 2  # the day and the marker
            return False
        self._rows.writes["usage"] += 3  # the row, the day and the marker
        return True

    def _row_write(self, key_id: str, count: int, credits: int) -> Write:
        transforms = [
            _transform("usage_count", increment=Value(integer_value=count)),
            _transform("last_used_at", set_to_server_value=_REQUEST_TIME),
        ]
        if credits:
            spent = Value(integer_value=credits)
            transforms.append(_transform("credits_spent", increment=spent))
        return Write(
            update=Document(name=self._connection.path(self._rows.path(key_id))),
            update_mask=DocumentMask(field_paths=[]),
            update_transforms=transforms,
            current_document=Precondition(exists=True),
        )

    def _day_write(
        self, key_id: str, day: str, count: int, credits: int, owner: str | None
    ) -> Write:
        # The owner is the key's when the uses were counted: a key given to
        # another owner mid-day bills the day to its latest.
        fields = {"day": day, "key_id": key_id, "owner": owner}
        transforms = [_transform("count", increment=Value(integer_value=count))]
        if credits:
            spent = Value(integer_value=credits)
            transforms.append(_transform("credits", increment=spent))
        return Write(
            update=Document(name=self._path(key_id, day), fields=encode_fields(fields)),
            update_mask=DocumentMask(field_paths=list(fields)),
            update_transforms=transforms,
        )

    async def of_key(self, key_id: str, days: int) -> list[tuple[str, int, int]]:
        """The last ``days`` day documents of a key, newest first: (day, uses,
        credits spent)."""
        await self._connection.ensure_open()
        query = StructuredQuery(
            from_=[
                StructuredQuery.CollectionSelector(collection_id=USAGE_SUBCOLLECTION)
            ],
            order_by=[_order("day", StructuredQuery.Direction.DESCENDING)],
            limit=days,
        )
        documents, _ = await self._rows.query(
            f"usage read of key {key_id}",
            self._connection.path(self._rows.path(key_id)),
            query,
        )
        self._rows.reads["admin"] += max(1, len(documents))
        counts = [_day_count(document) for document in documents]
        return [(count.day, count.uses, count.credits) for count in counts]

    async def of_owner(self, owner: str, first: str, last: str) -> list[DayCount]:
        """Every day document of ``owner``'s keys from ``first`` to ``last``
        (``YYYY-MM-DD``, inclusive), of keys deleted since too: one
        collection-group query, a read per document (one if none).

        It needs a composite index (collection group ``usage``: ``owner``,
        ``day``); without one Firestore refuses it, and this says so.
        """
        await self._connection.ensure_open()
        query = StructuredQuery(
            from_=[
                StructuredQuery.CollectionSelector(
                    collection_id=USAGE_SUBCOLLECTION, all_descendants=True
                )
            ],
            where=StructuredQuery.Filter(
                composite_filter=StructuredQuery.CompositeFilter(
                    op=StructuredQuery.CompositeFilter.Operator.AND,
                    filters=[
                        equal("owner", owner),
                        _compare("day", ">=", first),
                        _compare("day", "<=", last),
                    ],
                )
            ),
            order_by=[_order("day", StructuredQuery.Direction.ASCENDING)],
        )
        try:
            documents, _ = await self._rows.query(
                f"usage read of owner {owner}", self._connection.path(), query
            )
        except Refused as exc:
            raise StoreUnavailable(
                "The usage report needs a Firestore composite index (collection "
                "group 'usage': owner, day); docs/deploy.md has the command."
            ) from exc
        self._rows.reads["admin"] += max(1, len(documents))
        # Other collections' day documents share the group name (another
        # keystore collection in this database): only this one's count.
        ours = self._connection.path(self._rows.name) + "/"
        return [_day_count(d) for d in documents if d.name.startswith(ours)]


def _day_count(document: Any) -> DayCount:
    key_id = document.name.split("/")[-3]
    fields = decode_fields(document.fields)
    return DayCount(
        key_id=key_id,
        day=str(fields.get("day", "")),
        uses=_count(fields, "count"),
        credits=_count(fields, "credits"),
    )


def _count(row: dict[str, Any], name: str) -> int:
    # A hand-edited count of the wrong type reads as none.
    value = row.get(name)
    return value if type(value) is int else 0


_OPERATORS = {
    ">=": StructuredQuery.FieldFilter.Operator.GREATER_THAN_OR_EQUAL,
    "<=": StructuredQuery.FieldFilter.Operator.LESS_THAN_OR_EQUAL,
}


def _compare(field: str, op: str, value: Any) -> StructuredQuery.Filter:
    return StructuredQuery.Filter(
        field_filter=StructuredQuery.FieldFilter(
            field=StructuredQuery.FieldReference(field_path=field),
            op=_OPERATORS[op],
            value=encode_value(value),
        )
    )


def _order(field: str, direction: Any) -> StructuredQuery.Order:
    return StructuredQuery.Order(
        field=StructuredQuery.FieldReference(field_path=field), direction=direction
    )


def _transform(field_path: str, **change: Any) -> DocumentTransform.FieldTransform:
    return DocumentTransform.FieldTransform(field_path=field_path, **change)
