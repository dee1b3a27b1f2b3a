"""Response bodies shared by the baseline apps.

They copy api/routes.py's shapes so that every app serializes the same JSON and
only the key check differs between them.
"""

from datetime import datetime

from pydantic import BaseModel

HEADER = "x-api-key"


class Health(BaseModel):
    status: str


class WhoAmI(BaseModel):
    id: str
    name: str
    scopes: list[str]
    expires_at: datetime | None
