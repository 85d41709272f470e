"""A Dapr subscriber app as its users write it: the Dapr SDK's FastAPI extension, nothing of Streamgroup.

Its business logic records every event it is handed (one JSON line per call, in the file named by
``CHECKOUT_RECORD``), so that a test can see what the app saw; an order's ``outcome`` says how the
handler answers: ``drop`` returns ``{"status": "DROP"}``, ``retry`` returns ``{"status": "RETRY"}`` the
first time, ``fail-once`` raises the first time it sees the event (FastAPI answers 500).
``CHECKOUT_ROUTE`` moves the orders route (a redeployed app whose routes changed).
"""

from __future__ import annotations

import json
import os
from typing import Any

from dapr.ext.fastapi import DaprApp
from fastapi import Body, FastAPI

app = FastAPI()
dapr_app = DaprApp(app)
seen: set[str] = set()


def record(route: str, event: Any) -> None:
    with open(os.environ["CHECKOUT_RECORD"], "a") as log:
        log.write(json.dumps({"route": route, "event": event}) + "\n")


def outcome(event: Any) -> str | None:
    data = event.get("data") if isinstance(event, dict) else None
    return data.get("outcome") if isinstance(data, dict) else None


def first_time(event: dict[str, Any]) -> bool:
    new = event["id"] not in seen
    seen.add(event["id"])
    return new


@dapr_app.subscribe(pubsub="pubsub", topic="orders", route=os.environ.get("CHECKOUT_ROUTE"))
def order(event: Any = Body()) -> dict[str, str]:  # noqa: B008 - FastAPI's way of asking for the body
    record(os.environ.get("CHECKOUT_ROUTE") or "/events/pubsub/orders", event)
    match outcome(event):
        case "drop":
            return {"status": "DROP"}
        case "retry" if first_time(event):
            return {"status": "RETRY"}
        case "fail-once" if first_time(event):
            raise RuntimeError("the order service is not ready for this one yet")
    return {"status": "SUCCESS"}


@dapr_app.subscribe(pubsub="pubsub", topic="payloads", metadata={"rawPayload": "true"}, route="/payloads")
def payload(event: Any = Body()) -> None:  # noqa: B008
    record("/payloads", event)
