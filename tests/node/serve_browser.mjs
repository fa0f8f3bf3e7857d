// serve_browser.mjs - drives the web demo of `minigpt serve` in Debian's headless Chromium with
// playwright-core (tests/test_serve.c starts the server with the --fake-answer test hook).
// usage: node serve_browser.mjs BASE_URL IMAGE.png SCREENSHOT.png [PHRASE (default: red circle)]
// Uploads the image, picks [detection], sends, waits for the streamed answer, then reports the
// boxes drawn over the image, the coloured phrases and the [identify] region text of a dragged
// rectangle as ONE line of JSON on stdout; exit 3 when Chromium is missing (the test skips).
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [base, imagePath, shot, phrase = 'red circle'] = process.argv.slice(2);
const exe = '/usr/bin/chromium';
if (!fs.existsSync(exe)) {
  console.log(JSON.stringify({ skip: 'no ' + exe }));
  process.exit(3);
}
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'mg-chromium-'));
// a persistent context is how playwright takes a fresh --user-data-dir (the profile above)
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: exe, headless: true, timeout: 30000, viewport: { width: 1200, height: 800 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const out = { console_errors: [], outside_requests: [] };
try {
  const page = browser.pages()[0] || await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') out.console_errors.push(m.text()); });
  page.on('pageerror', (e) => out.console_errors.push(String(e)));
  page.on('request', (r) => { if (!r.url().startsWith(base) && !r.url().startsWith('data:')) out.outside_requests.push(r.url()); });
  await page.goto(base + '/', { waitUntil: 'load', timeout: 15000 });
  await page.waitForFunction(() => !document.getElementById('model').textContent.includes('connecting'), null, { timeout: 10000 });
  out.model_label = await page.textContent('#model');
  await page.setInputFiles('#file', imagePath);
  await page.waitForSelector('#stage:not([hidden])', { timeout: 10000 });
  await page.click('.chip[data-task="detection"]');
  out.prompt_after_chip = await page.inputValue('#prompt');
  await page.fill('#prompt', out.prompt_after_chip + phrase);
  await page.click('#send');
  await page.waitForSelector('.box', { timeout: 15000 });
  await page.waitForSelector('.msg.assistant .phrase', { timeout: 15000 });
  out.boxes = await page.$$eval('.box', (els) => els.map((e) => ({
    label: e.textContent, color: getComputedStyle(e).borderTopColor,
    left: e.style.left, top: e.style.top, width: e.style.width, height: e.style.height })));
  out.phrases = await page.$$eval('.msg.assistant .phrase', (els) => els.map((e) => ({ text: e.textContent, color: getComputedStyle(e).color })));
  out.answer = await page.textContent('.msg.assistant');
  await page.screenshot({ path: shot });
  // drag a rectangle over the image's left half, top half: [identify] gets the region text
  const b = await page.locator('#overlay').boundingBox();
  await page.mouse.move(b.x + b.width * 0.1 + 0.5, b.y + b.height * 0.2 + 0.5);
  await page.mouse.down();
  await page.mouse.move(b.x + b.width * 0.5, b.y + b.height * 0.5, { steps: 4 });
  await page.mouse.up();
  out.identify_prompt = await page.inputValue('#prompt');
  out.active_chip = await page.getAttribute('.chip.active', 'data-task');
} catch (e) {
  out.error = String(e && e.stack || e);
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(out));
process.exit(out.error ? 1 : 0);
