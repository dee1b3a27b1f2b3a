"""What a request to the demo app gets from usage limits: 429s with their
headers, route costs, the order of checks, and the admin API's limit fields."""

from collections.abc import AsyncIterator

import httpx
import pytest

from api.main import create_app
from keystore import Settings, get_store, reset_store
from keystore.limits import parse_rate_limit, parse_refill
from tests.conftest import Emulator, serve
from tests.limits.helpers import row

pytestmark = pytest.mark.anyio


async def _key(**limits: object) -> dict[str, str]:
    made = await get_store().create(name="k", **limits)  # type: ignore[arg-type]
    return {"x-api-key": made.key}


async def test_over_the_rate_limit_is_a_429_with_the_draft_headers(
    client: httpx.AsyncClient,
) -> None:
    key = await _key(rate_limit=parse_rate_limit("3/1h"))
    answers = [await client.get("/v1/whoami", headers=key) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    ok, refused = answers[0], answers[3]
    assert ok.headers["RateLimit-Policy"] == '"key";q=3;w=3600'
    assert ok.headers["RateLimit"].startswith('"key";r=2;t=')
    assert ok.json()["rate_limit"] == "3/1h"
    assert refused.json() == {"detail": "Rate limit exceeded."}
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert refused.headers["RateLimit"].startswith('"key";r=0;t=')


async def test_a_403_to_a_key_with_a_rate_limit_carries_its_headers(
    client: httpx.AsyncClient,
) -> None:
    key = await _key(rate_limit=parse_rate_limit("3/1h"))
    for _ in range(2):  # a 403 counts against nothing: r stays at the limit
        r = await client.get("/v1/reports", headers=key)
        assert r.status_code == 403
        assert r.headers["RateLimit-Policy"] == '"key";q=3;w=3600'
        assert r.headers["RateLimit"].startswith('"key";r=3;t=')
    credits_only = await _key(credits=5)
    r = await client.get("/v1/reports", headers=credits_only)
    assert r.status_code == 403 and "RateLimit" not in r.headers


async def test_out_of_credits_is_a_429_with_retry_after_the_refill(
    client: httpx.AsyncClient,
) -> None:
    no_refill = await _key(credits=1)
    refilled = await _key(credits=1, refill=parse_refill("10/day"))
    for key in (no_refill, refilled):
        assert (await client.get("/v1/whoami", headers=key)).json()["credits"] == 0
    r = await client.get("/v1/whoami", headers=no_refill)
    assert (r.status_code, r.json()) == (429, {"detail": "Usage credits exhausted."})
    assert "Retry-After" not in r.headers and "RateLimit" not in r.headers
    r = await client.get("/v1/whoami", headers=refilled)
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 86_400


async def test_a_route_costs_what_it_says_and_a_403_costs_nothing(
    client: httpx.AsyncClient,
) -> None:
    made = await get_store().create(name="k", scopes=["reports:read"], credits=12)
    key = {"x-api-key": made.key}
    assert (await client.get("/v1/reports/full", headers=key)).status_code == 200
    assert (await client.get("/v1/reports", headers=key)).status_code == 200
    plain = await get_store().create(name="p", credits=12)
    for _ in range(3):  # 403: the scope is checked before any limit
        r = await client.get("/v1/reports/full", headers={"x-api-key": plain.key})
        assert r.status_code == 403
    assert (await client.get("/v1/whoami", headers=key)).json()["credits"] == 5
    r = await client.get("/v1/whoami", headers={"x-api-key": plain.key})
    assert r.json()["credits"] == 11


async def test_a_key_without_limits_gets_no_limit_headers(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/v1/whoami", headers=await _key())
    assert r.status_code == 200 and "RateLimit" not in r.headers
    assert r.json()["credits"] is None


async def test_credits_not_held_in_an_outage_are_a_503(
    settings: Settings, emulator: Emulator
) -> None:
    app = create_app(settings.model_copy(update={"timeout": 0.5, "retry_after": 2}))
    try:
        async with serve(app) as client:
            credits = await _key(credits=100)
            rate = await _key(rate_limit=parse_rate_limit("100/1h"))
            await client.get("/v1/whoami", headers=rate)  # the key is in memory
            emulator.pause()
            try:
                r = await client.get("/v1/whoami", headers=credits)
                assert r.status_code == 503 and r.headers["Retry-After"] == "2"
                # Rate limits go on, counted in this process.
                for _ in range(5):
                    r = await client.get("/v1/whoami", headers=rate)
                    assert r.status_code == 200, r.text
            finally:
                emulator.pause(False)
    finally:
        await reset_store()


@pytest.fixture
async def admin(client: httpx.AsyncClient) -> AsyncIterator[dict[str, str]]:
    made = await get_store().create(name="admin", scopes=["admin"])
    yield {"x-api-key": made.key}


async def test_the_admin_api_takes_and_returns_limits(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    body = {
        "name": "acme",
        "owner": "acme-inc",
        "rate_limit": "100/1m",
        "credits": 10_000,
        "refill": "10000/month",
    }
    r = await client.post("/admin/keys", json=body, headers=admin)
    assert r.status_code == 201, r.text
    made = r.json()
    for name in ("owner", "rate_limit", "credits", "refill"):
        assert made[name] == body[name]
    r = await client.patch(
        f"/admin/keys/{made['id']}",
        json={"rate_limit": None, "credits": 5},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    assert (r.json()["rate_limit"], r.json()["credits"]) == (None, 5)
    r = await client.get(f"/admin/keys/{made['id']}", headers=admin)
    assert (r.json()["refill"], r.json()["credits"]) == ("10000/month", 5)
    for bad in ({"rate_limit": "lots"}, {"credits": -1}, {"refill": "5/week"}):
        r = await client.post("/admin/keys", json={"name": "x", **bad}, headers=admin)
        assert r.status_code == 422, bad


async def test_a_limited_admin_cannot_hand_out_more_than_it_has(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    actor = await get_store().create(
        name="reseller",
        scopes=["admin"],
        rate_limit=parse_rate_limit("100/1m"),
        credits=250,
    )
    admin = {"x-api-key": actor.key}
    for body in (
        {"name": "x"},  # no limits at all
        {"name": "x", "rate_limit": "200/1m", "credits": 10},  # faster
        {"name": "x", "rate_limit": "10/1m", "credits": 5000},  # more than it has
        {"name": "x", "rate_limit": "10/1m", "refill": "10/day"},  # a refill
    ):
        r = await client.post("/admin/keys", json=body, headers=admin)
        assert r.status_code == 403, (body, r.text)
    # Credits are paid for with its own: across creates, never more than held.
    made = []
    for _ in range(3):
        body = {"name": "x", "rate_limit": "1/1s", "credits": 100}
        made.append(await client.post("/admin/keys", json=body, headers=admin))
    assert [r.status_code for r in made] == [201, 201, 403]
    assert "Cannot grant 100 credits" in made[2].json()["detail"]
    # 250, less 200 handed out, less the 7 requests made so far (1 each).
    assert (await row(settings, actor.record.id))["credits"] == 250 - 200 - 7
    key_id = made[0].json()["id"]
    for patch in ({"credits": None}, {"credits": 1000}, {"refill": "5/day"}):
        r = await client.patch(f"/admin/keys/{key_id}", json=patch, headers=admin)
        assert r.status_code == 403, (patch, r.text)
    # Rotation moves limits, so it hands out nothing; but only of a key it
    # could have made itself.
    r = await client.post(f"/admin/keys/{key_id}/rotate", json={}, headers=admin)
    assert r.status_code == 201, r.text
    free = await get_store().create(name="free", scopes=["admin"])
    r = await client.post(f"/admin/keys/{free.record.id}/rotate", headers=admin)
    assert r.status_code == 403, r.text


async def test_an_admin_with_an_owner_makes_keys_of_that_owner_only(
    client: httpx.AsyncClient,
) -> None:
    store = get_store()
    await store.set_owner_limits("acme", credits=1000)
    actor = await store.create(name="acme-admin", scopes=["admin"], owner="acme")
    admin = {"x-api-key": actor.key}
    r = await client.post(
        "/admin/keys", json={"name": "x", "owner": "other"}, headers=admin
    )
    assert r.status_code == 403, r.text
    r = await client.post("/admin/keys", json={"name": "x"}, headers=admin)
    assert (r.status_code, r.json()["owner"]) == (201, "acme")
    # Its keys' own credits only bound them further: the owner's pool is shared.
    r = await client.patch(
        f"/admin/keys/{r.json()['id']}", json={"credits": 10**6}, headers=admin
    )
    assert r.status_code == 200, r.text
    for patch in ({"owner": None}, {"owner": "other"}):
        r = await client.patch(
            f"/admin/keys/{actor.record.id}", json=patch, headers=admin
        )
        assert r.status_code == 403, r.text
