// Drives the dashboard in headless Chromium (playwright-core) and prints one JSON result line.
//
//   node tests/gateway/browser_check.mjs '{"url": "http://127.0.0.1:PORT", "peers": [...],
//     "num_blocks": 30, "screenshot": "/tmp/map.png", "question": "..."}'
//
// Checks nothing itself: it reports what it saw (peers on the map, blocks they cover, partial
// replies while streaming, the final reply, page errors, requests to other hosts) for pytest.
import { existsSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { chromium } from "playwright-core";

const args = JSON.parse(process.argv[2]);
const started = Date.now();
const result = { ok: false, steps: [], page_errors: [], console_errors: [], foreign_requests: [] };
const step = (name) => result.steps.push([name, Date.now() - started]);

function findChromium() {
  if (args.chromium) return args.chromium;
  if (existsSync("/usr/bin/chromium")) return "/usr/bin/chromium";
  return execFileSync("sh", ["-c", "command -v chromium"]).toString().trim();
}

// A screenshot of the page as tall as its content (no empty viewport below it).
async function shoot(page, path) {
  const height = await page.evaluate(() => Math.ceil(document.querySelector("main").getBoundingClientRect().bottom));
  await page.setViewportSize({ width: 1280, height: Math.max(240, height) });
  await page.screenshot({ path });
  await page.setViewportSize({ width: 1280, height: 720 });
}

const browser = await chromium.launch({
  executablePath: findChromium(),
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    // nothing but loopback resolves: the page must never reach another host
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
  ],
});

try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 }, deviceScaleFactor: 1 });
  const origin = new URL(args.url).origin;
  await page.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(origin + "/") || url === origin) return route.continue();
    result.foreign_requests.push(url);
    return route.abort();
  });
  page.on("pageerror", (error) => result.page_errors.push(String(error)));
  page.on("console", (msg) => {
    if (msg.type() === "error") result.console_errors.push(msg.text());
  });

  await page.goto(args.url + "/", { waitUntil: "load" });
  step("loaded");

  // the map: every peer listed, and their spans cover every block of the model
  const peers = args.peers;
  await page.waitForFunction(
    ({ peers, n }) => {
      const rows = [...document.querySelectorAll(".peer-row")].map((r) => r.dataset.peerId);
      const cells = document.querySelectorAll(".cell.on[data-peer-id]");
      return peers.every((p) => rows.includes(p)) && cells.length >= n;
    },
    { peers, n: args.num_blocks },
    { timeout: 60_000 },
  );
  step("map shown");
  Object.assign(result, await page.evaluate((peers) => {
    const text = document.body.innerText;
    const cells = [...document.querySelectorAll(".cell.on[data-peer-id]")];
    const perPeer = {};
    for (const cell of cells) perPeer[cell.dataset.peerId] = (perPeer[cell.dataset.peerId] || 0) + 1;
    return {
      peers_in_text: peers.filter((p) => text.includes(p)),
      blocks_per_peer: perPeer,
      blocks_covered: new Set(cells.map((c) => Number(c.dataset.block))).size,
      cells_on: cells.length,
      coverage_text: [...document.querySelectorAll(".coverage-text")].map((e) => e.textContent),
      states: [...document.querySelectorAll(".peer-row .state")].map((e) => e.textContent),
      link: document.querySelector("#link").textContent,
    };
  }, peers));
  if (args.screenshot) {
    await page.waitForTimeout(2500); // one more push: rtt, cache and session figures filled in
    await shoot(page, args.screenshot);
  }
  step("screenshot");

  // the playground: a streamed reply that grows token by token
  await page.click("#tab-playground");
  await page.waitForFunction(() => document.querySelector("#model").value !== "", null, { timeout: 30_000 });
  result.model = await page.inputValue("#model");
  if (args.max_tokens) await page.fill("#max-tokens", String(args.max_tokens));
  await page.fill("#temperature", "0");
  await page.evaluate(() => {
    window.__partials = [];
    const log = document.querySelector("#log");
    new MutationObserver(() => {
      const reply = log.querySelector("li.assistant.streaming");
      const text = reply ? reply.textContent : null;
      if (text && window.__partials[window.__partials.length - 1] !== text) window.__partials.push(text);
    }).observe(log, { childList: true, subtree: true, characterData: true });
  });
  await page.fill("#prompt", args.question);
  await page.click("#send");
  step("sent");
  await page.waitForFunction(
    () => !document.querySelector("li.assistant.streaming") && !document.querySelector("#send").disabled,
    null,
    { timeout: 120_000 },
  );
  step("answered");
  Object.assign(result, await page.evaluate(() => {
    const reply = document.querySelector("li.assistant");
    const meta = reply ? reply.querySelector(".meta") : null;
    return {
      partials: window.__partials,
      final: reply ? reply.firstChild.textContent : "",
      reply_meta: meta ? meta.textContent : null,
      chat_errors: [...document.querySelectorAll("#log li.error")].map((e) => e.textContent),
    };
  }));
  if (args.screenshot_chat) await shoot(page, args.screenshot_chat);
  if (args.screenshot_after) {  // the map again, with the conversation's kept caches
    await page.click("#tab-swarm");
    await page.waitForTimeout(4000);
    await shoot(page, args.screenshot_after);
  }
  result.ok = true;
} catch (error) {
  result.error = String(error && error.stack ? error.stack : error);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
