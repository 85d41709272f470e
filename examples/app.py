"""A minimal app behind the sidecar: every entry arrives as one POST; a 2xx reply acknowledges it."""

import sys

from aiohttp import web

received = 0


async def handle(request: web.Request) -> web.Response:
    global received
    entry = await request.json()  # the entry's fields, as a JSON object
    received += 1
    print(f"{request.headers['Streamgroup-Stream']} {request.headers['Streamgroup-Id']} {entry}", flush=True)
    return web.Response(status=204)  # 2xx: ack. 5xx or a timeout: retried later.


async def stats(_: web.Request) -> web.Response:
    return web.json_response({"received": received})


app = web.Application()
app.add_routes([web.post("/", handle), web.get("/stats", stats)])

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8080, print=None)
