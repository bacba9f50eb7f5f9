// Adversarial checks of RoomClient (service/rooms/static/wsapp.js) against real servers.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { control, joined, route, sleep, uniqueRoom, until } from "./helpers.mjs";

const clients = [];
afterEach(async () => {
  for (const client of clients.splice(0)) client.close();
  route.color = "blue";
});

// Known bug, not fixed: the server's error frame does not say which message it refused, so the
// client keeps a refused message pending and sends it again after every reconnect (and the app,
// told "not sent", later sees it appear). Fixing it needs a message id echoed in error frames.
test("a message the server refused is not sent again after a reconnect",
  { todo: "refused messages stay pending: needs a client id echoed in error frames" }, async () => {
    const room = uniqueRoom("refused");
    const alice = await joined({ room });
    clients.push(alice);
    alice.send("x".repeat(5000)); // over MAX_BODY_CHARS (4096)
    await until(() => alice.of("error").length === 1, "body_too_long");
    assert.equal(alice.of("error")[0].error, "body_too_long");
    const restarted = control("restart", "blue");
    await until(() => alice.of("reconnecting").length === 1, "the server's 1012");
    await restarted;
    await until(() => alice.of("open").length === 2, "welcome after the restart", 20000);
    await sleep(300);
    assert.equal(alice.of("error").length, 1, "the refused message was sent again");
    assert.equal(alice.pending.length, 0, "and it stays pending for good");
  });
