// The site as a person sees it, in Debian's Chromium, against a running daemon:
// - the index, a category page, an article, a feed's page, search results for "ky hop", the
//   404 page and the page that answers the subscribe form;
// - axe-core (WCAG 2.0/2.1 A and AA) at 390 px (light and dark) and 1280 px: every violation is
//   printed with its nodes, a serious or critical one fails;
// - at 360 px nothing scrolls sideways;
// - the first Tab lands on a visible skip link to #noi-dung, and the Tab after following it
//   lands inside the main content;
// - no console error, no failed request, no content-security-policy violation;
// - the feed page's copy button puts a feed URL on the clipboard;
// - the subscribe form sent with an address no mail can reach answers 400, the form back as
//   typed with the field marked invalid and described by the message;
// - the subscribe form on the index, filled with an address and sent, answers 200 with the
//   page saying a confirmation mail was sent;
// - full-page screenshots at 390 px (light and dark) and 1280 px are kept.
//
// Usage: node .ci/site_browser.mjs BASE_URL SHOTS_DIR   (NODE_PATH names the node_modules with
// playwright-core and axe-core; .ci/site_e2e.py starts the daemon and runs this)

import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const [baseArg, shotsDir] = process.argv.slice(2);
if (!baseArg || !shotsDir) {
  console.error("usage: node .ci/site_browser.mjs BASE_URL SHOTS_DIR");
  process.exit(2);
}
const base = baseArg.replace(/\/+$/, "");
const SUBSCRIBER = "nguoi.dan@example.vn";
const AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];
const BLOCKING = new Set(["serious", "critical"]);
const NARROW = 360;
const PHONE = 390;
const DESKTOP = 1280;
const TIMEOUT_MS = 30000;
fs.mkdirSync(shotsDir, { recursive: true });

let failures = 0;
let passes = 0;
const report = (ok, what, details = []) => {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  for (const d of details) console.log(`       ${d}`);
  if (ok) passes += 1;
  else failures += 1;
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const context = await browser.newContext({
  viewport: { width: PHONE, height: 800 },
  deviceScaleFactor: 1,
  colorScheme: "light",
  locale: "vi-VN",
});
await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: new URL(base).origin });
context.setDefaultTimeout(TIMEOUT_MS);

// What went wrong while a page loaded and was used: console errors (CSP violations show there
// too), uncaught exceptions, failed requests, subresources answering 4xx/5xx.
// A 404 (or 400) is expected for the page that answers so itself; the site's icon is not
// missing (its link names it, and /favicon.ico leads to it).
function watch(page, expected404 = null) {
  const problems = [];
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const where = msg.location()?.url || "";
    if (/^Failed to load resource/.test(msg.text()) && where === expected404) return;
    problems.push(`console: ${msg.text()}${where ? ` (${where})` : ""}`);
  });
  page.on("pageerror", (err) => problems.push(`exception: ${err.message}`));
  page.on("requestfailed", (req) => problems.push(`request failed: ${req.url()} ${req.failure()?.errorText}`));
  page.on("response", (res) => {
    if (res.status() >= 400 && res.request().resourceType() !== "document") {
      problems.push(`${res.status()} for ${res.url()}`);
    }
  });
  return problems;
}

// The first same-site link on the page whose path matches `pattern`.
async function firstLink(page, pattern) {
  const hrefs = await page.$$eval("a[href]", (as) => as.map((a) => a.href));
  const origin = new URL(base).origin;
  return hrefs.find((h) => {
    const u = new URL(h);
    return u.origin === origin && pattern.test(u.pathname);
  });
}

async function axe(page, label) {
  // Evaluated through the DevTools protocol: the page's content security policy (no inline
  // script) does not apply, and stays in force for everything else.
  if (!(await page.evaluate(() => Boolean(window.axe)))) await page.evaluate(axeSource);
  // A page that sets no background shows the browser's canvas (dark in dark mode), which axe
  // takes for white: name the canvas colour so that axe measures what is on the screen.
  await page.evaluate(() => {
    const clear = (e) => getComputedStyle(e).backgroundColor === "rgba(0, 0, 0, 0)";
    const root = document.documentElement;
    if (root.dataset.axeCanvas || (clear(root) && clear(document.body))) {
      root.dataset.axeCanvas = "1";
      root.style.backgroundColor = "Canvas";
    }
  });
  const result = await page.evaluate(async (tags) =>
    await window.axe.run(document, { runOnly: { type: "tag", values: tags }, resultTypes: ["violations"] }),
  AXE_TAGS);
  const details = [];
  let blocking = 0;
  for (const v of result.violations) {
    if (BLOCKING.has(v.impact)) blocking += 1;
    details.push(`${v.impact}: ${v.id} (${v.help}) ${v.helpUrl}`);
    for (const n of v.nodes) {
      details.push(`    ${n.target.join(" ")}: ${(n.failureSummary || "").replace(/\s+/g, " ").trim()}`);
    }
  }
  report(blocking === 0,
    `${label}: axe ${AXE_TAGS.join(",")}: ${result.violations.length} violation(s), ${blocking} serious or critical`,
    details);
}

async function noSidewaysScroll(page, label) {
  await page.setViewportSize({ width: NARROW, height: 800 });
  const { scroll, wide } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    // The elements that stick out, to say what to fix.
    wide: [...document.querySelectorAll("body *")]
      .filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)
      .slice(0, 5)
      .map((e) => `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""}${e.className ? "." + String(e.className).split(" ").join(".") : ""} (right edge ${Math.round(e.getBoundingClientRect().right)})`),
  }));
  report(scroll <= NARROW, `${label}: ${NARROW}px wide: scrollWidth ${scroll} <= ${NARROW}`,
    scroll <= NARROW ? [] : wide);
}

// Run on a freshly loaded page, before anything has had focus.
async function skipLink(page, label) {
  await page.keyboard.press("Tab");
  const first = await page.evaluate(() => {
    const el = document.activeElement;
    const r = el.getBoundingClientRect();
    return {
      tag: el.tagName.toLowerCase(),
      href: el.getAttribute("href"),
      text: (el.textContent || "").trim(),
      visible: r.width > 0 && r.height > 0 && r.bottom > 0 && r.right > 0 &&
        r.top < window.innerHeight && r.left < window.innerWidth,
      target: Boolean(document.getElementById("noi-dung")),
    };
  });
  const ok = first.tag === "a" && (first.href || "").endsWith("#noi-dung") && first.target && first.visible;
  report(ok, `${label}: the first Tab reaches a visible skip link to #noi-dung`,
    ok ? [] : [`focused <${first.tag} href=${JSON.stringify(first.href)}> "${first.text}", ` +
      `visible ${first.visible}, #noi-dung ${first.target ? "exists" : "missing"}`]);
  if (!ok) return;
  await page.keyboard.press("Enter");
  await page.keyboard.press("Tab");
  const inside = await page.evaluate(() => {
    const el = document.activeElement;
    const focusable = document.querySelectorAll(
      '#noi-dung :is(a[href], button, input, select, textarea, [tabindex]:not([tabindex="-1"]))');
    return {
      inside: Boolean(el?.closest("#noi-dung")),
      any: [...focusable].some((e) => e.getClientRects().length > 0),
      what: `${el?.tagName.toLowerCase()} ${(el?.textContent || "").trim().slice(0, 40)}`,
    };
  });
  if (inside.any) {
    report(inside.inside, `${label}: after the skip link, Tab moves into the main content`,
      inside.inside ? [] : [`focus went to ${inside.what}`]);
  }
}

async function shoot(page, name) {
  await page.evaluate(() => document.activeElement?.blur());
  await page.setViewportSize({ width: PHONE, height: 800 });
  await page.emulateMedia({ colorScheme: "light" });
  await page.screenshot({ path: path.join(shotsDir, `${name}-${PHONE}.png`), fullPage: true });
  await page.emulateMedia({ colorScheme: "dark" });
  await page.screenshot({ path: path.join(shotsDir, `${name}-${PHONE}-dark.png`), fullPage: true });
  await page.emulateMedia({ colorScheme: "light" });
  await page.setViewportSize({ width: DESKTOP, height: 900 });
  await page.screenshot({ path: path.join(shotsDir, `${name}-${DESKTOP}.png`), fullPage: true });
}

// The checks of a loaded page after its own: axe at 390 px (light, dark) and 1280 px, no
// sideways scroll at 360 px, screenshots, and what went wrong meanwhile.
async function checkPage(page, name, problems) {
  await page.evaluate(() => { document.activeElement?.blur(); window.scrollTo(0, 0); });
  await page.setViewportSize({ width: PHONE, height: 800 });
  await page.emulateMedia({ colorScheme: "light" });
  await axe(page, `${name} ${PHONE}px light`);
  await page.emulateMedia({ colorScheme: "dark" });
  await axe(page, `${name} ${PHONE}px dark`);
  await page.emulateMedia({ colorScheme: "light" });
  await noSidewaysScroll(page, name);
  await page.setViewportSize({ width: DESKTOP, height: 900 });
  await axe(page, `${name} ${DESKTOP}px`);
  await shoot(page, name);
  report(problems.length === 0, `${name}: no console error, failed request or CSP violation`, problems);
}

async function open(url, name, status = 200) {
  const page = await context.newPage();
  const problems = watch(page, status === 404 ? url : null);
  let response = null;
  try {
    response = await page.goto(url, { waitUntil: "load" });
  } catch (e) {
    report(false, `${name}: ${url} did not load`, [String(e)]);
    await page.close();
    return null;
  }
  const got = response ? response.status() : 0;
  report(got === status, `${name}: ${url} answers ${got}, expected ${status}`);
  await page.setViewportSize({ width: PHONE, height: 800 });
  await skipLink(page, name);
  return { page, problems };
}

try {
  const pages = [{ name: "index", url: `${base}/` }];
  const index = await open(`${base}/`, "index");
  if (index) {
    // The pages to look at: the first of each kind the index links to (else the archive).
    const kinds = [
      ["category", /\/categories\/[^/]+\.html$/],
      ["article", /\/articles\/.+\.html$/],
      ["feed", /\/feeds\/[^/]+\.html$/],
    ];
    let archive = null;
    for (const [name, pattern] of kinds) {
      let url = await firstLink(index.page, pattern);
      if (!url) {
        archive ??= await (async () => {
          const p = await context.newPage();
          await p.goto(`${base}/archive/`);
          return p;
        })();
        url = await firstLink(archive, pattern);
      }
      report(Boolean(url), `${name}: a link from the index (or the archive) to ${pattern}`,
        url ? [url] : []);
      if (url) pages.push({ name, url });
    }
    if (archive) await archive.close();
    pages.push({ name: "search", url: `${base}/search?q=ky+hop` });
    pages.push({ name: "not-found", url: `${base}/does-not-exist`, status: 404 });
    await checkPage(index.page, "index", index.problems);
    await index.page.close();
  }

  for (const { name, url, status } of pages.slice(1)) {
    const opened = await open(url, name, status ?? 200);
    if (!opened) continue;
    const { page, problems } = opened;
    // One page's exception is reported and the next page is still looked at.
    try {
      if (name === "search") {
        const marks = await page.locator("main mark").count();
        report(marks > 0, `search: ${marks} highlighted words in the results`);
      }
      if (name === "feed") {
        // The copy button (a script may reveal it): clicking puts a feed URL on the clipboard.
        await page.setViewportSize({ width: DESKTOP, height: 900 });
        const button = page.locator("main button:visible").first();
        if ((await button.count()) === 0) {
          report(false, "feed: a visible copy button in the page (is its script blocked?)");
        } else {
          await page.evaluate(() => navigator.clipboard.writeText(""));
          await button.click();
          await page.waitForTimeout(300);
          const copied = await page.evaluate(() => navigator.clipboard.readText());
          const ok = /\/feeds\/[^/]+\.(rss|atom|json)$/.test(copied);
          report(ok, `feed: the copy button copies the feed URL`, [`clipboard: ${JSON.stringify(copied)}`]);
        }
      }
      await checkPage(page, name, problems);
    } catch (e) {
      report(false, `${name}: ${e.stack || e}`);
    }
    await page.close();
  }

  // An address the browser lets through but no mail can reach (no dot in its domain): the
  // answer says what is wrong, gives the form back as typed with the field marked for screen
  // readers, and passes the same checks as every page.
  {
    const page = await context.newPage();
    const problems = watch(page, `${base}/subscribe`);
    await page.setViewportSize({ width: PHONE, height: 800 });
    await page.goto(`${base}/`);
    const form = page.locator('form[action$="/subscribe"]').first();
    await form.locator('input[name="email"]').fill("ten@vidu");
    const [response] = await Promise.all([
      page.waitForResponse((r) => r.request().method() === "POST" && new URL(r.url()).pathname.endsWith("/subscribe")),
      form.locator('button[type="submit"]').first().click(),
    ]);
    await page.waitForLoadState("load");
    const field = page.locator('input[name="email"]');
    const kept = (await field.count()) === 1 && (await field.inputValue()) === "ten@vidu";
    const marked = kept && (await field.getAttribute("aria-invalid")) === "true";
    const describedBy = kept ? await field.getAttribute("aria-describedby") : null;
    const said = describedBy
      ? (await page.locator(`#${describedBy}`).innerText()).replace(/\s+/g, " ")
      : "";
    report(response.status() === 400 && kept && marked && /chưa đúng/.test(said),
      `subscribe, a wrong address: 400 (${response.status()}), the address kept (${kept}), ` +
      `the field marked invalid (${marked}) and described by the message ("${said}")`);
    await checkPage(page, "subscribe-wrong-address", problems);
    await page.close();
  }

  // The subscribe form, as a citizen on a phone fills it.
  {
    const page = await context.newPage();
    const problems = watch(page);
    await page.setViewportSize({ width: PHONE, height: 800 });
    await page.goto(`${base}/`);
    const form = page.locator('form[action$="/subscribe"]').first();
    if ((await form.count()) === 0) {
      report(false, "subscribe: a form posting to /subscribe on the index");
    } else {
      await form.scrollIntoViewIfNeeded();
      await form.screenshot({ path: path.join(shotsDir, `subscribe-form-${PHONE}.png`) });
      await form.locator('input[name="email"]').fill(SUBSCRIBER);
      const [response] = await Promise.all([
        page.waitForResponse((r) => r.request().method() === "POST" && new URL(r.url()).pathname.endsWith("/subscribe")),
        form.locator('button[type="submit"], input[type="submit"], button:not([type])').first().click(),
      ]);
      await page.waitForLoadState("load");
      await skipLink(page, "subscribed");
      const text = (await page.locator("body").innerText()).replace(/\s+/g, " ");
      const said = /thư xác nhận|đã gửi/i.test(text);
      report(response.status() === 200 && said,
        `subscribe: POST /subscribe answers ${response.status()} with a page saying a confirmation mail was sent`,
        said ? [] : [`page text: ${text.slice(0, 300)}`]);
      await checkPage(page, "subscribed", problems);
    }
    await page.close();
  }
} catch (e) {
  report(false, `site browser: ${e.stack || e}`);
} finally {
  await browser.close();
}
console.log(`screenshots: ${shotsDir}`);
console.log(`site browser: ${passes} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
