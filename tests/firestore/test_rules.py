"""firestore.rules, as loaded by the emulator: client SDKs can touch nothing.

Requests go to the emulator's REST endpoint as a web or mobile client sends them,
without credentials and with a Firebase ID token; the server's own client (IAM,
which rules do not govern) keeps working.
"""

import base64
import json
import time

import httpx
import pytest

from keystore import ApiKeyStore, Settings
from tests.conftest import PROJECT, Emulator

pytestmark = pytest.mark.anyio


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def id_token() -> str:
    """An unsigned Firebase ID token of a signed-in user; the emulator accepts these."""
    now = int(time.time())
    claims = {
        "iss": f"https://securetoken.google.com/{PROJECT}",
        "aud": PROJECT,
        "sub": "user-1",
        "user_id": "user-1",
        "iat": now,
        "auth_time": now,
        "exp": now + 3600,
        "firebase": {"sign_in_provider": "password"},
    }
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "signed-in"])
async def test_client_sdk_requests_are_denied(
    emulator: Emulator, store: ApiKeyStore, settings: Settings, signed_in: bool
) -> None:
    made = await store.create(name="target")
    root = f"http://{emulator.host}/v1/projects/{PROJECT}/databases/(default)/documents"
    collection = f"{root}/{settings.collection}"
    document = f"{collection}/{made.record.id}"
    headers = {"Authorization": f"Bearer {id_token()}"} if signed_in else {}
    fields = {
        "fields": {"hash": {"stringValue": "0" * 64}, "scopes": {"arrayValue": {}}}
    }
    query = {"structuredQuery": {"from": [{"collectionId": settings.collection}]}}
    name = f"projects/{PROJECT}/databases/(default)/documents/{settings.collection}"
    requests = [
        ("GET", document, None),  # read one key
        ("GET", collection, None),  # list the keys
        ("POST", f"{root}:runQuery", query),  # query the keys
        ("POST", f"{root}:batchGet", {"documents": [f"{name}/{made.record.id}"]}),
        ("POST", f"{collection}?documentId=evil", fields),  # add a key
        ("PATCH", document, fields),  # overwrite a key, granting scopes
        ("DELETE", document, None),  # revoke someone's key
    ]
    async with httpx.AsyncClient(headers=headers) as http:
        for method, url, body in requests:
            r = await http.request(method, url, json=body)
            text = r.text
            assert r.status_code == 403, f"{method} {url}: {text}"
            assert "PERMISSION_DENIED" in text
    # The server's own access is untouched, and nothing was changed.
    assert await store.does_api_key_exist(made.key)
    assert [row.id for row in await store.list_keys()] == [made.record.id]
