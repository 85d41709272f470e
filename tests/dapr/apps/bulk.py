"""A Dapr bulk subscriber, written as Dapr's documentation shows one for Python (programmatic subscription
with ``bulkSubscribe``; the SDK's FastAPI extension has no bulk option). Records each bulk request's
entries (file ``BULK_RECORD``) and answers a status per entry: ``DROP`` for an order whose ``outcome`` is
``drop``, else ``SUCCESS``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import Body, FastAPI

app = FastAPI()


@app.get("/dapr/subscribe")
def subscribe() -> list[dict[str, Any]]:
    return [{"pubsubname": "pubsub", "topic": "orders", "route": "/orders-bulk",
             "bulkSubscribe": {"enabled": True, "maxMessagesCount": 10, "maxAwaitDurationMs": 40}}]


@app.post("/orders-bulk")
def orders(request: Any = Body()) -> dict[str, Any]:  # noqa: B008
    with open(os.environ["BULK_RECORD"], "a") as log:
        log.write(json.dumps(request) + "\n")
    statuses = []
    for entry in request["entries"]:
        data = entry["event"].get("data") or {}
        statuses.append({"entryId": entry["entryId"],
                         "status": "DROP" if data.get("outcome") == "drop" else "SUCCESS"})
    return {"statuses": statuses}
