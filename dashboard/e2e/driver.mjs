// A line-protocol driver of Debian's chromium through playwright-core, for the pytest
// browser tests (tests/e2e/browser.py): one JSON command per stdin line, one JSON answer
// per stdout line ({"ok": true, "result": …} or {"ok": false, "error": "…"}).
// Never downloads a browser: CHROMIUM (default /usr/bin/chromium) must exist.
//
//   node dashboard/e2e/driver.mjs <user-data-dir>
//
// Commands ({"op": …, …}): goto {url}, wait {selector, timeout}, waitFn {expr, arg, timeout},
// eval {expr, arg}, fill {selector, value}, click {selector}, press {selector, key},
// screenshot {path, fullPage}, errors {} (console errors and page errors since the last
// call), close {}.
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const userDataDir = process.argv[2];
if (!userDataDir) {
  console.error("usage: driver.mjs <user-data-dir>");
  process.exit(2);
}
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-dev-shm-usage",
];
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: FLAGS,
  viewport: { width: 1280, height: 900 },
  timeout: 60_000,
});
const page = context.pages()[0] ?? (await context.newPage());
let errors = [];
page.on("console", (msg) => {
  if (msg.type() === "error") errors.push(`console: ${msg.text()}`);
});
page.on("pageerror", (err) => errors.push(`pageerror: ${err.message}`));

// `expr` is a JS function's source; it runs in the page as an expression applied to the
// JSON argument (an expression, not eval() in the page, so the page's CSP stays on).
const call = (expr, arg) => `(${expr})(${JSON.stringify(arg)})`;

const ops = {
  goto: async ({ url }) => {
    await page.goto(url, { waitUntil: "load" });
    return page.url();
  },
  wait: async ({ selector, wait_ms: timeout = 15_000, state = "visible" }) => {
    await page.waitForSelector(selector, { timeout, state });
    return true;
  },
  // Polls with page.evaluate (waitForFunction would eval() a string, which the CSP forbids).
  waitFn: async ({ expr, arg = null, wait_ms: timeout = 15_000 }) => {
    const deadline = Date.now() + timeout;
    for (;;) {
      const value = await page.evaluate(call(expr, arg));
      if (value) return value;
      if (Date.now() > deadline) throw new Error(`waitFn: still falsy after ${timeout} ms: ${expr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  },
  eval: async ({ expr, arg = null }) => await page.evaluate(call(expr, arg)),
  fill: async ({ selector, value }) => {
    await page.fill(selector, value);
    return true;
  },
  click: async ({ selector }) => {
    await page.click(selector);
    return true;
  },
  press: async ({ selector, key }) => {
    await page.press(selector, key);
    return true;
  },
  screenshot: async ({ path, fullPage = true }) => {
    await page.screenshot({ path, fullPage });
    return path;
  },
  errors: async () => {
    const out = errors;
    errors = [];
    return out;
  },
  close: async () => {
    await context.close();
    return true;
  },
};

const rl = createInterface({ input: process.stdin });
const reply = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
reply({ ok: true, result: "ready" });
for await (const line of rl) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
    const fn = ops[cmd.op];
    if (!fn) throw new Error(`unknown op ${cmd.op}`);
    const result = await fn(cmd);
    reply({ ok: true, result: result ?? null });
    if (cmd.op === "close") break;
  } catch (err) {
    reply({ ok: false, error: String(err?.message ?? err) });
  }
}
await context.close().catch(() => {});
process.exit(0);
