"""The ASGI application of the Autobahn run: every WebSocket message back, as it came."""


async def app(scope, receive, send):
    if scope["type"] != "websocket":  # lifespan and HTTP: nothing to serve
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")})
        else:
            return
