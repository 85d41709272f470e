"""A Dapr app with routing rules, as Dapr's documentation declares them programmatically (``routes`` with
``rules`` and a ``default``). ``ROUTED_RULE`` replaces the second rule's match (a test of one that is
refused). Records each event with the route it came to (file ``ROUTED_RECORD``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import Body, FastAPI, Request

app = FastAPI()


@app.get("/dapr/subscribe")
def subscribe() -> list[dict[str, Any]]:
    return [{"pubsubname": "pubsub", "topic": "orders", "routes": {
        "rules": [{"match": 'event.type == "widget"', "path": "/widgets"},
                  {"match": os.environ.get("ROUTED_RULE", "event.data.price > 100"), "path": "/expensive"}],
        "default": "/orders"}}]


@app.post("/{route}")
def handle(route: str, request: Request, event: Any = Body()) -> None:  # noqa: B008
    with open(os.environ["ROUTED_RECORD"], "a") as log:
        log.write(json.dumps({"route": "/" + route, "event": event,
                              "content_type": request.headers.get("content-type")}) + "\n")
