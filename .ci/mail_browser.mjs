// Renders the mails .ci/mail_preview.py made, as a phone's mail app would, in Debian's Chromium:
// at 375 px nothing scrolls sideways, axe-core finds no colour-contrast problem (light and dark),
// and a screenshot of each is kept.
//
// Usage: node .ci/mail_browser.mjs PREVIEW_DIR SHOTS_DIR   (NODE_PATH names the node_modules
// with playwright-core and axe-core)

import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";
import url from "node:url";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const [previewDir, shotsDir] = process.argv.slice(2);
fs.mkdirSync(shotsDir, { recursive: true });
const kinds = ["alert", "digest", "confirm", "correction"];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let failures = 0;
const report = (ok, what) => {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failures += 1;
};
for (const scheme of ["light", "dark"]) {
  for (const width of [320, 375, 600]) {
    const context = await browser.newContext({
      viewport: { width, height: 900 },
      colorScheme: scheme,
      deviceScaleFactor: 1,
    });
    const page = await context.newPage();
    for (const kind of kinds) {
      const file = path.join(previewDir, `${kind}.html`);
      await page.goto(url.pathToFileURL(file).href);
      const { scroll, view } = await page.evaluate(() => ({
        scroll: document.documentElement.scrollWidth,
        view: window.innerWidth,
      }));
      report(scroll <= view, `${kind} ${scheme} ${width}px: scrollWidth ${scroll} <= ${view}`);
      if (width === 375) {
        await page.addScriptTag({ content: axeSource });
        const result = await page.evaluate(async () =>
          await window.axe.run(document, { runOnly: { type: "rule", values: ["color-contrast"] } }));
        const bad = result.violations.flatMap((v) => v.nodes.map((n) => n.target.join(" ")));
        report(bad.length === 0,
          `${kind} ${scheme}: axe color-contrast, ${result.passes.reduce((n, p) => n + p.nodes.length, 0)} ` +
          `elements pass${bad.length ? `, violations: ${bad.join(", ")}` : ""}`);
        await page.screenshot({
          path: path.join(shotsDir, `${kind}-${scheme}-${width}.png`),
          fullPage: true,
        });
      }
    }
    await context.close();
  }
}
await browser.close();
console.log(`mail browser check: ${failures} failed`);
process.exit(failures ? 1 : 0);
