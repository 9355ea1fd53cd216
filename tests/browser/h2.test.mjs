// A real browser against the hub over HTTPS: Debian's chromium, driven by playwright-core.
//
//   HUB_URL=https://127.0.0.1:PORT CHROMIUM=/usr/bin/chromium node h2.test.mjs
//
// The server must run with `--tls-self-signed` (`.ci/browser` starts it); the browser is told
// to accept its certificate. Checks that 12 EventSources on one page (twice HTTP/1.1's six
// connections per origin) all open, over HTTP/2 and one connection (the DevTools protocol's
// `protocol` and `connectionId` of each response), and all receive an event published with
// fetch() on that same connection.

import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const base = (process.env.HUB_URL || "https://127.0.0.1:8443").replace(/\/$/, "");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const STREAMS = 12;
const STEP_MS = 15_000;

if (!/^https:\/\/127\.0\.0\.1:\d+$/.test(base)) {
  throw new Error(`HUB_URL must be https://127.0.0.1:PORT, not ${base}`);
}

// Nothing here may hang: the whole run has a deadline.
const deadline = setTimeout(() => {
  console.error("FAIL: the HTTP/2 browser test did not finish within 120 s");
  process.exit(1);
}, 120_000);
deadline.unref();

const profile = fs.mkdtempSync(path.join(os.tmpdir(), "ssehub-chromium-h2-"));
let context;

async function step(name, body) {
  const started = Date.now();
  await body();
  console.log(`ok   ${name} (${Date.now() - started} ms)`);
}

try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    ignoreHTTPSErrors: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync",
      "--ignore-certificate-errors",
    ],
    timeout: 60_000,
  });
  // Only the hub under test may be contacted.
  await context.route("**/*", (route) =>
    route.request().url().startsWith(base + "/") ? route.continue() : route.abort());
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(STEP_MS);

  // Every response's protocol and connection, as the network stack reports them.
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  const responses = [];
  cdp.on("Network.responseReceived", ({ response }) => responses.push(response));

  await step("the page loads over HTTP/2", async () => {
    const response = await page.goto(base + "/stats", { waitUntil: "load" });
    assert.equal(response.status(), 200);
  });

  const topic = `h2-${Date.now()}`;
  await step(`${STREAMS} EventSources open at once`, async () => {
    await page.evaluate(({ topic, count }) => {
      window.received = Array.from({ length: count }, () => []);
      window.opened = 0;
      window.sources = Array.from({ length: count }, (_, i) => {
        const source = new EventSource(`/events?topic=${encodeURIComponent(topic)}`);
        source.onopen = () => { window.opened += 1; };
        source.onmessage = (event) => window.received[i].push(event.data);
        return source;
      });
    }, { topic, count: STREAMS });
    await page.waitForFunction((count) => window.opened === count, STREAMS);
    const stats = await page.evaluate(async () => (await fetch("/stats")).json());
    assert.equal(stats.subscribers, STREAMS, JSON.stringify(stats));
  });

  await step("every one receives a published event", async () => {
    const answer = await page.evaluate(async (topic) => {
      const response = await fetch(`/publish?topic=${encodeURIComponent(topic)}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ data: "to all twelve ✓" }),
      });
      return { status: response.status, body: await response.json() };
    }, topic);
    assert.equal(answer.status, 200, JSON.stringify(answer));
    assert.equal(answer.body.receivers, STREAMS, JSON.stringify(answer));
    await page.waitForFunction(() => window.received.every((r) => r.length === 1));
    const received = await page.evaluate(() => window.received);
    assert.deepEqual(received, Array.from({ length: STREAMS }, () => ["to all twelve ✓"]));
  });

  await step("all of it went over one HTTP/2 connection", async () => {
    const streams = responses.filter((r) => new URL(r.url).pathname === "/events");
    assert.equal(streams.length, STREAMS, JSON.stringify(streams.map((r) => r.url)));
    const protocols = new Set(responses.map((r) => r.protocol));
    assert.deepEqual([...protocols], ["h2"], JSON.stringify(responses.map((r) => [r.url, r.protocol])));
    const connections = new Set(responses.map((r) => r.connectionId));
    assert.equal(connections.size, 1, `connections: ${[...connections]}`);
  });

  await page.evaluate(() => window.sources.forEach((source) => source.close()));
  console.log("PASS: HTTP/2 browser test");
} catch (error) {
  console.error("FAIL:", error);
  process.exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  fs.rmSync(profile, { recursive: true, force: true });
}
