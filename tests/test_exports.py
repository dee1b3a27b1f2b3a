"""``keystore`` exports every name a user's code meets, and ``__all__`` is
sorted: the exceptions, and every keystore type in a public signature of what
it exports."""

import inspect
import typing
from collections.abc import Iterator

import keystore
from keystore import errors


def test_all_is_sorted_and_every_name_is_there() -> None:
    assert keystore.__all__ == sorted(keystore.__all__)
    for name in keystore.__all__:
        assert getattr(keystore, name) is not None


def test_every_exception_is_exported() -> None:
    raised = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.KeyStoreError)
    }
    assert raised <= set(keystore.__all__)


def _keystore_types(hint: object) -> Iterator[type]:
    if isinstance(hint, type) and hint.__module__.startswith("keystore"):
        yield hint
    for arg in typing.get_args(hint):
        yield from _keystore_types(arg)


def test_every_type_in_a_public_signature_is_exported() -> None:
    exported = {getattr(keystore, name) for name in keystore.__all__}
    seen: set[type] = set()
    for name in keystore.__all__:
        value = getattr(keystore, name)
        members = (
            [m for n, m in inspect.getmembers(value) if not n.startswith("_")]
            if inspect.isclass(value)
            else [value]
        )
        for member in members:
            if not callable(member):
                continue
            try:
                hints = typing.get_type_hints(member)
            except (NameError, TypeError):
                continue
            for hint in hints.values():
                seen.update(_keystore_types(hint))
    assert seen, "no keystore type found in any signature"
    assert seen <= exported, sorted(t.__name__ for t in seen - exported)
