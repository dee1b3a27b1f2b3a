"""Customers signed in with Firebase Authentication (Identity Platform): the
owner of the self-service routes.

``Authorization: Bearer <Firebase ID token>`` is verified by firebase-admin,
Google's library for it, for the project; the token's uid is the owner id.
With ``FIREBASE_AUTH_EMULATOR_HOST`` set, firebase-admin takes the Auth
emulator's tokens, which are unsigned: anyone could make one for any uid. So
the app refuses to start with that variable on Cloud Run (``K_SERVICE``).
"""

import asyncio
import logging
import os
from typing import Annotated

import firebase_admin
from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from firebase_admin import auth, credentials, exceptions
from google.auth.credentials import AnonymousCredentials, Credentials

from keystore import ConfigError

logger = logging.getLogger(__name__)

#: Set by the Firebase tools when the Auth emulator runs; firebase-admin reads it.
EMULATOR_VARIABLE = "FIREBASE_AUTH_EMULATOR_HOST"

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="FirebaseIdToken",
    description="A Firebase ID token of the signed-in customer.",
)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def check_environment() -> None:
    """ConfigError if emulator tokens would be taken on Cloud Run."""
    if os.environ.get(EMULATOR_VARIABLE) and os.environ.get("K_SERVICE"):
        raise ConfigError(
            f"{EMULATOR_VARIABLE} is set on Cloud Run (K_SERVICE): the Auth "
            "emulator's tokens are unsigned, so anyone could sign in as anyone. "
            "Unset it; the service then takes real Firebase ID tokens only."
        )


class _VerifyOnly(credentials.Base):  # type: ignore[misc]
    """No credential: checking an ID token needs only Google's public keys,
    so sign-in does not depend on the service's own credentials."""

    def get_credential(self) -> Credentials:
        return AnonymousCredentials()  # type: ignore[no-untyped-call]


class FirebaseOwner:
    """A FastAPI dependency: the signed-in customer's uid, from a verified
    Firebase ID token of ``project``; 401 without one."""

    def __init__(self, project: str | None) -> None:
        check_environment()
        if not project:
            raise ConfigError(
                "Set GOOGLE_CLOUD_PROJECT: customers' Firebase ID tokens are "
                "checked against that project."
            )
        # firebase-admin reads the emulator variable once per app: an app each.
        emulated = "emulator" if os.environ.get(EMULATOR_VARIABLE) else "google"
        name = f"keystore-{project}-{emulated}"
        try:
            self._app = firebase_admin.get_app(name)
        except ValueError:  # not made yet in this process
            self._app = firebase_admin.initialize_app(
                _VerifyOnly(), options={"projectId": project}, name=name
            )

    async def __call__(
        self,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> str:
        if credentials is None:
            raise _unauthorized("Sign in: send Authorization: Bearer <ID token>.")
        try:
            # In a thread: now and then the library fetches Google's public
            # keys over HTTP, which would block the event loop.
            claims = await asyncio.to_thread(
                auth.verify_id_token, credentials.credentials, self._app
            )
        except (ValueError, auth.InvalidIdTokenError):
            # Expired ones too. Revocation is not checked (a call to Firebase
            # per request, and credentials): a token lives an hour at most.
            raise _unauthorized("The ID token is not valid; sign in again.") from None
        except exceptions.FirebaseError:
            # CertificateFetchError most likely: Google's keys out of reach.
            logger.warning("ID tokens cannot be checked now", exc_info=True)
            raise HTTPException(
                503,
                "Sign-in cannot be checked now; retry shortly.",
                headers={"Retry-After": "5"},
            ) from None
        return str(claims["uid"])
