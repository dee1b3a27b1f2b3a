"""gRPC client interceptors for tests: see every call, or lose a real answer.

They sit in the store's own channel (``ApiKeyStore(interceptors=...)``); every
call still goes to the emulator.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc


@dataclass
class Call:
    method: str
    metadata: dict[str, str]
    #: The request message (None for a stream of them).
    request: Any = None


def _method(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class _Recording:
    # grpc.aio files an interceptor under the first kind of call it is for:
    # one class per kind.
    def __init__(self, calls: list[Call]) -> None:
        self.calls = calls

    def record(self, details: Any, request: Any = None) -> None:
        method = _method(details).rpartition("/")[2]
        # Pairs, as iterating gives them (a Metadata's keys differ by version).
        pairs = tuple(details.metadata or ())
        self.calls.append(Call(method, dict(pairs), request))


class _Record(_Recording, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(
        self, continuation: Any, details: Any, request: Any
    ) -> Any:
        self.record(details, request)
        return await continuation(details, request)


class _RecordUnaryStream(_Recording, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(
        self, continuation: Any, details: Any, request: Any
    ) -> Any:
        self.record(details, request)
        return await continuation(details, request)


class _RecordStreamStream(_Recording, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self, continuation: Any, details: Any, requests: Any
    ) -> Any:
        self.record(details)
        return await continuation(details, requests)


@dataclass
class Recorder:
    """Records each call's method (``GetDocument``...), metadata and request.

    A channel takes one interceptor per kind of call: pass ``interceptors``.
    """

    calls: list[Call] = field(default_factory=list)

    @property
    def interceptors(self) -> list[Any]:
        return [
            _Record(self.calls),
            _RecordUnaryStream(self.calls),
            _RecordStreamStream(self.calls),
        ]

    def count(self, *methods: str) -> int:
        return sum(1 for call in self.calls if call.method in methods)


class _Lost(grpc.aio.AioRpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@dataclass
class LoseAnswers(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Lets the first ``count`` calls of ``method`` (after ``skip`` more) reach
    Firestore and take effect, then loses their answers: dropped (UNAVAILABLE) or, with
    ``delay``, late past the deadline (DEADLINE_EXCEEDED after ``delay`` s)."""

    method: str = "Commit"
    count: int = 1
    delay: float = 0.0
    #: Calls of ``method`` let through untouched before the first lost one.
    skip: int = 0
    lost: int = 0
    #: Called with each answer that got lost, once it has landed.
    on_lost: Callable[[], None] = lambda: None

    async def intercept_unary_unary(
        self, continuation: Any, details: Any, request: Any
    ) -> Any:
        call = await continuation(details, request)
        if _method(details).rpartition("/")[2] != self.method:
            return call
        if self.skip > 0:
            self.skip -= 1
            return call
        if self.lost >= self.count:
            return call
        await call  # the answer arrived: the call took effect
        self.lost += 1
        self.on_lost()
        if self.delay:
            await asyncio.sleep(self.delay)
            raise _Lost(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        raise _Lost(grpc.StatusCode.UNAVAILABLE, "The answer was lost.")


@dataclass
class Refuse(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Answers the next ``count`` calls of ``method`` with ``code`` (ABORTED:
    contention; UNAVAILABLE: unreachable), without sending them."""

    code: grpc.StatusCode = grpc.StatusCode.ABORTED
    method: str = "Commit"
    count: int = 0
    refused: int = 0

    async def intercept_unary_unary(
        self, continuation: Any, details: Any, request: Any
    ) -> Any:
        if self.count and _method(details).endswith("/" + self.method):
            self.count -= 1
            self.refused += 1
            raise _Lost(self.code, "refused by the test")
        return await continuation(details, request)


@dataclass
class _Holding:
    delay: float = 0.3
    method: str = "Commit"
    armed: bool = False
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def _hold(self, details: Any) -> None:
        if self.armed and _method(details).endswith("/" + self.method):
            self.started.set()
            await asyncio.sleep(self.delay)


@dataclass
class Hold(_Holding, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """While ``armed``, holds each call of ``method`` ``delay`` seconds before
    sending it; ``started`` is set when one is held."""

    async def intercept_unary_unary(
        self, continuation: Any, details: Any, request: Any
    ) -> Any:
        await self._hold(details)
        return await continuation(details, request)


@dataclass
class HoldStream(_Holding, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """``Hold`` for a call that answers with a stream (BatchGetDocuments)."""

    method: str = "BatchGetDocuments"

    async def intercept_unary_stream(
        self, continuation: Any, details: Any, request: Any
    ) -> Any:
        await self._hold(details)
        return await continuation(details, request)
