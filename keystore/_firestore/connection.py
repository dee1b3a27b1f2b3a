"""The connection to Firestore: channel, credentials, call metadata, deadlines, outages.

Every RPC keystore makes goes through the generated client
(``google.cloud.firestore_v1.services.firestore``), so each carries the routing
header (``x-goog-request-params``) the SDK sends for it, and
``google-cloud-resource-prefix`` names the database; but for one. The reads
of rows not in memory (``batch_get``) are sent on the channel with protobuf's
own (de)serializers and the same two headers: the generated client's wrapping
costs a third of a lookup's CPU (benchmarks/README.md, core).

Every call has a deadline, retries included, and Google's errors become
StoreUnavailable here. After a failure no call is sent for ``retry_after``
seconds, so an outage costs callers no waiting. The channel reconnects within
about a second once Firestore is back (its reconnect backoff is capped), so no
new channel is ever needed.
"""

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import google.auth
import grpc
from google.api_core import exceptions as google_errors
from google.api_core.gapic_v1.routing_header import to_grpc_metadata
from google.api_core.retry import AsyncRetry, if_exception_type
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
from google.cloud.firestore_v1.services.firestore import FirestoreAsyncClient
from google.cloud.firestore_v1.services.firestore.transports import (
    FirestoreGrpcAsyncIOTransport,
)
from google.cloud.firestore_v1.types import (
    BatchGetDocumentsRequest,
    BatchGetDocumentsResponse,
    GetDocumentRequest,
)

from keystore._firestore.errors import Missing, Refused
from keystore.errors import ConfigError, StoreUnavailable
from keystore.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A ``grpc.aio.ClientInterceptor``: tracing, or the tests' fault injection
#: (grpc ships no type hints, so it is Any to mypy either way).
Interceptor = Any

#: The emulator's project when none is set, as the SDK names it (so that the
#: SDK's own clients, and the emulator's console, see the same rows).
EMULATOR_PROJECT = "google-cloud-firestore-emulator"

_BATCH_GET = "/google.firestore.v1.Firestore/BatchGetDocuments"
# The raw protobuf classes behind the generated client's messages.
_BatchGetRequest = BatchGetDocumentsRequest.pb()
_BatchGetResponse = BatchGetDocumentsResponse.pb()

_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # gRPC waits longer and longer (up to 2 minutes) before it reconnects a
    # channel after a failure; capped, the store finds Firestore within about a
    # second of its return.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]

_CLOSE_GRACE = 1.0  # seconds
_CLOSE_DRAIN = 0.05  # seconds

#: Errors after which sending the same request again is safe: reads are, and
#: every write keystore makes carries its own marker (commits.py). A deadline
#: passed is one of them: the answer may have been lost after the write landed.
_RETRYABLE = (
    google_errors.ServiceUnavailable,
    google_errors.InternalServerError,
    google_errors.TooManyRequests,
    google_errors.DeadlineExceeded,
    google_errors.Aborted,
)


def _is_cancelling() -> bool:
    """True if the running task itself is being cancelled (or timed out)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


class Connection:
    """One gRPC channel to one Firestore database, opened on first use.

    ``interceptors`` (grpc.aio client interceptors) see every call: tracing,
    or the tests' fault injection.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        timer: Callable[[], float] = time.monotonic,
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        self.settings = settings
        self._timer = timer
        self._interceptors = list(interceptors)
        self._client: FirestoreAsyncClient | None = None
        self._opening = asyncio.Lock()
        self._unavailable_until = float("-inf")
        #: True from a failed call to the next call that succeeds.
        self.is_degraded = False
        #: Channels opened and closed over this connection's life (tests count them).
        self.channels_opened = 0
        self.channels_closed = 0
        self.project = ""
        self.database = ""
        self.metadata: list[tuple[str, str]] = []
        self._batch_get: Any = None
        self._batch_get_metadata: list[tuple[str, str]] = []
        # Per attempt, a share of the call's deadline, so that a lost answer
        # leaves time to ask again.
        self.attempt_timeout = settings.timeout / 2
        self.retry = AsyncRetry(
            initial=0.05,
            maximum=0.5,
            multiplier=2,
            predicate=if_exception_type(*_RETRYABLE),
            timeout=settings.timeout,
        )

    @property
    def is_unavailable(self) -> bool:
        """True while keystore waits out a Firestore failure."""
        return self._timer() < self._unavailable_until

    @property
    def is_open(self) -> bool:
        return self._client is not None

    def path(self, *parts: str) -> str:
        """A document or collection path in this database: ``.../documents/a/b``."""
        return "/".join((f"{self.database}/documents", *parts))

    async def open(self) -> FirestoreAsyncClient:
        """The generated client on this connection's channel; ConfigError if
        no credentials can be found."""
        try:
            return await self._open()
        except GoogleAuthError as exc:
            raise ConfigError(
                "No Google credentials: set FIRESTORE_EMULATOR_HOST for the emulator, "
                "or run 'gcloud auth application-default login'."
            ) from exc

    async def ensure_open(self, *, insist: bool = False) -> None:
        """Open the channel if it is not; StoreUnavailable if that fails (on the
        request path a failing credential is an outage, not a config error)."""
        if self._client is None:
            await self.call("connection", _opened, retry=False, insist=insist)

    async def aclose(self) -> None:
        """Close the channel; a later call opens a new one."""
        client, self._client = self._client, None
        if client is not None:
            # Calls still under way get a moment to end before they are
            # cancelled; then gRPC gets one to hand the endings of cancelled
            # calls to this loop, which they belong to, before it may close.
            transport: Any = client.transport  # the asyncio gRPC one made here
            await transport.grpc_channel.close(grace=_CLOSE_GRACE)
            await asyncio.sleep(_CLOSE_DRAIN)
            self.channels_closed += 1

    async def batch_get(self, names: list[str]) -> tuple[list[Any], int]:
        """One BatchGetDocuments attempt, inside ``call``: the documents of
        ``names`` that exist (raw protobufs), and Firestore's time of the read
        (ns). Errors are Google's, as the generated client raises them."""
        request = _BatchGetRequest(database=self.database, documents=names)
        found: list[Any] = []
        read_time = 0
        try:
            stream = self._batch_get(
                request,
                timeout=self.attempt_timeout,
                metadata=self._batch_get_metadata,
            )
            async for answer in stream:
                read_time = max(read_time, answer.read_time.ToNanoseconds())
                if answer.HasField("found"):
                    found.append(answer.found)
        except grpc.aio.AioRpcError as exc:
            raise google_errors.from_grpc_error(exc) from exc  # type: ignore[no-untyped-call]
        return found, read_time

    async def get_document(self, name: str, what: str, *, insist: bool = False) -> Any:
        """The document at ``name``, or None if there is none: one read."""

        async def read(client: FirestoreAsyncClient) -> Any:
            try:
                return await client.get_document(
                    request=GetDocumentRequest(name=name),
                    retry=None,
                    timeout=self.attempt_timeout,
                    metadata=self.metadata,
                )
            except google_errors.NotFound:
                return None

        return await self.call(what, read, insist=insist)

    async def call(
        self,
        what: str,
        call: Callable[[FirestoreAsyncClient], Awaitable[T]],
        *,
        timeout: float | None = None,
        retry: bool = True,
        insist: bool = False,
    ) -> T:
        """``call(client)`` within the deadline, retried while that is safe.

        A write Firestore refused is Refused (Missing for a document it needs
        that does not exist): it changed nothing. Any other failure is
        StoreUnavailable, and pauses every call for ``retry_after`` seconds;
        ``insist`` sends the call during that pause (a shutdown's last writes).
        """
        if self.is_unavailable and not insist:
            raise StoreUnavailable("Firestore is unavailable; retrying shortly.")

        async def attempt() -> T:
            return await call(await self._open())

        try:
            async with asyncio.timeout(timeout or self.settings.timeout):
                try:
                    result = await (self.retry(attempt)() if retry else attempt())
                except asyncio.CancelledError as exc:
                    if _is_cancelling():
                        raise
                    # Not this task's cancel: gRPC cancelled the call, as it
                    # does to calls on a channel closed under them.
                    raise google_errors.Cancelled(  # type: ignore[no-untyped-call]
                        "The call was cancelled."
                    ) from exc
        except google_errors.NotFound as exc:
            self._answered()
            raise Missing(f"Firestore found no document for the {what}.") from exc
        # ABORTED and ALREADY_EXISTS are Conflicts; a conflict, like a failed
        # precondition, is an answer: the write did not happen.
        except (google_errors.FailedPrecondition, google_errors.Conflict) as exc:
            self._answered()
            raise Refused(f"Firestore refused the {what}.") from exc
        # Anything else from Google, the network or the credentials means
        # Firestore gave no usable answer; callers see one error for all of it.
        except (
            google_errors.GoogleAPIError,
            GoogleAuthError,
            grpc.RpcError,
            TimeoutError,
            OSError,
        ) as exc:
            self._failed(what, exc)
            raise StoreUnavailable(f"Firestore did not answer the {what}.") from exc
        self._answered()
        return result

    def _answered(self) -> None:
        self._unavailable_until = float("-inf")
        if self.is_degraded:
            logger.warning("Firestore answers again.")
            self.is_degraded = False

    def _failed(self, what: str, exc: BaseException) -> None:
        self._unavailable_until = self._timer() + self.settings.retry_after
        # One warning per outage, not one per failed call: an outage under
        # load would otherwise write hundreds of lines a second.
        log = logger.debug if self.is_degraded else logger.warning
        self.is_degraded = True
        log(
            "Firestore failed the %s (%s); answering from memory for %ss.",
            what,
            _describe(exc),
            self.settings.retry_after,
        )

    async def _open(self) -> FirestoreAsyncClient:
        if self._client is None:
            async with self._opening:
                if self._client is None:
                    self._client = await self._connect()
        return self._client

    async def _connect(self) -> FirestoreAsyncClient:
        settings = self.settings
        emulator = os.environ.get("FIRESTORE_EMULATOR_HOST")
        credentials: Any
        if emulator:
            credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
            project = (
                settings.project
                or os.environ.get("GOOGLE_CLOUD_PROJECT")
                or os.environ.get("GCLOUD_PROJECT")
                or EMULATOR_PROJECT
            )
            channel = grpc.aio.insecure_channel(
                emulator, options=_CHANNEL_OPTIONS, interceptors=self._interceptors
            )
            # The emulator's stand-in for credentials: it grants every access,
            # past the rules that deny all others.
            auth = [("authorization", "Bearer owner")]
            host = emulator
        else:
            # Finding credentials may read files or ask the metadata server.
            credentials, found = await asyncio.to_thread(
                google.auth.default, scopes=FirestoreGrpcAsyncIOTransport.AUTH_SCOPES
            )
            found = settings.project or os.environ.get("GOOGLE_CLOUD_PROJECT") or found
            if not found:
                raise DefaultCredentialsError(  # type: ignore[no-untyped-call]
                    "No Google Cloud project: set GOOGLE_CLOUD_PROJECT."
                )
            project = str(found)
            host = FirestoreGrpcAsyncIOTransport.DEFAULT_HOST
            channel = FirestoreGrpcAsyncIOTransport.create_channel(
                host,
                credentials=credentials,
                options=_CHANNEL_OPTIONS,
                interceptors=self._interceptors,
            )
            auth = []
        self.project = project
        self.database = f"projects/{project}/databases/{settings.database}"
        self.metadata = [("google-cloud-resource-prefix", self.database), *auth]
        self._batch_get = channel.unary_stream(
            _BATCH_GET,
            request_serializer=_BatchGetRequest.SerializeToString,
            response_deserializer=_BatchGetResponse.FromString,
        )
        routing = to_grpc_metadata((("database", self.database),))  # type: ignore[no-untyped-call]
        self._batch_get_metadata = [*self.metadata, routing]
        transport = FirestoreGrpcAsyncIOTransport(
            host=host, credentials=credentials, channel=channel
        )
        self.channels_opened += 1
        return FirestoreAsyncClient(transport=transport)


async def _opened(client: FirestoreAsyncClient) -> None:
    pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, google_errors.RetryError) and exc.cause is not None:
        exc = exc.cause
    return type(exc).__name__
