"""Schemathesis hooks of tests/test_openapi.py: the run keeps its own key.

Rotating, disabling or deleting the admin key the run authenticates with
would turn every later request into a 401 and leave the rest untested; the
requests that would act on it go to an id no key has instead.
"""

import os
from typing import Any

import schemathesis
from schemathesis import Case

#: The id of the run's admin key.
KEPT = os.environ["KEYSTORE_SCHEMATHESIS_KEY_ID"]


@schemathesis.hook
def before_call(
    context: schemathesis.HookContext, case: Case[Any], kwargs: dict[str, Any]
) -> None:
    if case.path_parameters and case.path_parameters.get("key_id") == KEPT:
        case.path_parameters["key_id"] = "not" + KEPT
