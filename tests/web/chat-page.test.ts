import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { type Browser, type BrowserContext, type Page, chromium } from 'playwright-core';
import { pino } from 'pino';
import { type ViteDevServer, build, createServer } from 'vite';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createApiClient } from '../../client/index.js';
import { loadOrCreateLocalSigningKey, mintLocalToken } from '../../server/auth/local-identity.js';
import { type RunningServer, startServer } from '../../server/app.js';
import { type Config, loadConfig } from '../../server/config.js';
import { WEBHOOK_SECRET, deliverWebhook } from '../support/frontegg-webhooks.js';
import { freePort } from '../support/ports.js';

/** Debian's Chromium, or the one CHROMIUM_PATH names. */
const chromiumPath = [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser'].find((candidate) => candidate && existsSync(candidate));
if (!chromiumPath && process.env.REQUIRE_CHROMIUM) throw new Error('REQUIRE_CHROMIUM is set and no Chromium was found (apt-get install chromium)');
const SCREENSHOTS = path.resolve('test-results/web');

describe.skipIf(!chromiumPath)('the chat page in Chromium, calling the API across origins', () => {
  let work: string;
  let config: Config;
  let keyFile: string;
  let api: RunningServer;
  let web: ViteDevServer;
  let webUrl: string;
  let browser: Browser;
  /** What went wrong on any page: page errors, failed requests, error answers, console errors. */
  const problems: string[] = [];
  let closing = false;

  beforeAll(async () => {
    work = await mkdtemp(path.join(tmpdir(), 'chat-page-'));
    await mkdir(SCREENSHOTS, { recursive: true });
    // The page on one origin, the API on another: only CORS lets it call.
    const webPort = await freePort();
    webUrl = `http://127.0.0.1:${webPort}`;
    keyFile = path.join(work, 'signing-key.json');
    const databaseUrl = inject('databaseUrl');
    config = loadConfig({
      ...(databaseUrl ? { DATABASE_URL: databaseUrl } : { PGLITE_DATA_DIR: path.join(work, 'pglite') }),
      LOCAL_IDENTITY_KEY_FILE: keyFile,
      CORS_ORIGINS: webUrl,
      FRONTEGG_WEBHOOK_SECRET: WEBHOOK_SECRET,
      // The tests write long conversations as fast as the API answers (40 writes in a row).
      RATE_LIMIT_WRITES_PER_MINUTE: '6000',
      // A fixed port, so that the API can stop and come back where the page calls it.
      PORT: String(await freePort()),
    });
    api = await startServer(config, pino({ level: 'silent' }));
    // The dev server mints "sign in as" tokens with the API's key, and builds the page against it.
    process.env.LOCAL_IDENTITY_KEY_FILE = keyFile;
    process.env.VITE_API_URL = api.url;
    web = await createServer({ configFile: 'web/vite.config.ts', server: { port: webPort, strictPort: true, host: '127.0.0.1' }, logLevel: 'silent' });
    await web.listen();
    browser = await chromium.launch({
      executablePath: chromiumPath,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  }, 120_000);

  afterAll(async () => {
    closing = true;
    await browser?.close();
    await web?.close();
    await api?.close();
    delete process.env.VITE_API_URL;
    delete process.env.LOCAL_IDENTITY_KEY_FILE;
    if (work) await rm(work, { recursive: true, force: true });
  });

  /**
   * A tab of `context` on the page, every problem on it recorded, but for answers with a status in
   * `expected` (a test that provokes them).
   */
  async function open(context: BrowserContext, name: string, { expected = [] as number[] } = {}): Promise<Page> {
    const page = await context.newPage();
    page.on('pageerror', (error) => problems.push(`${name}: page error: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error' && expected.length === 0) problems.push(`${name}: console error: ${message.text()}`);
    });
    page.on('requestfailed', (request) => {
      // Aborted by the page itself (a query superseded by a newer fetch, an event stream left by a
      // reload): a cancellation, not a failure.
      const cancelled = request.failure()?.errorText === 'net::ERR_ABORTED';
      if (!closing && !page.isClosed() && !cancelled && !expected.includes(0)) problems.push(`${name}: ${request.method()} ${request.url()} failed: ${request.failure()?.errorText}`);
    });
    page.on('response', (response) => {
      if (response.status() >= 400 && !expected.includes(response.status())) problems.push(`${name}: ${response.request().method()} ${response.url()} answered ${response.status()}`);
    });
    await page.goto(webUrl);
    return page;
  }

  async function signIn(page: Page, { email, tenant, role }: { email: string; tenant: string; role: string }) {
    await page.getByLabel('Email').fill(email);
    await page.getByLabel('Tenant').fill(tenant);
    await page.getByLabel('Role').selectOption(role);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect.poll(() => page.getByTestId('who').textContent()).toContain(email);
  }

  /** The assistant's last message: its text and status, sampled until it has ended. */
  async function watchReply(page: Page) {
    const reply = page.getByTestId('message-assistant').last();
    await reply.waitFor();
    const seen: { status: string | null; text: string }[] = [];
    for (;;) {
      const status = await reply.getAttribute('data-status');
      seen.push({ status, text: (await reply.textContent()) ?? '' });
      if (status !== 'streaming') return seen;
      await page.waitForTimeout(30);
    }
  }

  it('signs two people of one organization in; Ada sees her reply stream in, and her second tab follows live; Grace sees none of it', async () => {
    const tenant = `acme-${Date.now()}`;
    const ada = await browser.newContext({ viewport: { width: 1100, height: 700 } });
    const first = await open(ada, 'ada tab 1');
    await signIn(first, { email: 'ada@example.com', tenant, role: 'Admin' });
    await expect.poll(() => first.getByText('No messages yet').count()).toBe(1);

    await first.getByLabel('Message').fill('What is tRPC?');
    await first.getByLabel('Message').press('Enter');
    await first.getByTestId('message-user').filter({ hasText: 'What is tRPC?' }).waitFor();
    const streamed = await watchReply(first);
    const final = streamed.at(-1)!;
    expect(final.status).toBe('complete');
    expect(final.text).toContain('This is the demo assistant');
    // Seen part-way: streaming, with some of the text and not all of it.
    expect(streamed.some((sample) => sample.status === 'streaming' && sample.text.length > 1 && sample.text.length < final.text.length)).toBe(true);
    await expect.poll(() => first.getByTestId('session').first().textContent()).toContain('What is tRPC?');
    await first.screenshot({ path: path.join(SCREENSHOTS, 'ada-first-tab.png') });

    // A second tab of Ada's: signed in already, showing the conversation, then following it live.
    const second = await open(ada, 'ada tab 2');
    await second.getByTestId('message-user').filter({ hasText: 'What is tRPC?' }).waitFor();
    await first.getByLabel('Message').fill('And subscriptions?');
    await first.getByLabel('Message').press('Enter');
    await second.getByTestId('message-user').filter({ hasText: 'And subscriptions?' }).waitFor();
    const followed = await watchReply(second);
    expect(followed.at(-1)).toMatchObject({ status: 'complete', text: expect.stringContaining('And subscriptions?') });
    expect(followed.some((sample) => sample.status === 'streaming')).toBe(true);
    await second.screenshot({ path: path.join(SCREENSHOTS, 'ada-second-tab.png') });

    // Grace, of the same organization, in a browser of her own.
    const grace = await browser.newContext({ viewport: { width: 1100, height: 700 } });
    const hers = await open(grace, 'grace');
    await signIn(hers, { email: 'grace@example.com', tenant, role: 'Member' });
    await expect.poll(() => hers.getByText('No messages yet').count()).toBe(1);
    const titles = await hers.getByTestId('session').allTextContents();
    expect(titles.join(' ')).not.toContain('What is tRPC?');
    expect(await hers.getByTestId('message-user').count()).toBe(0);
    await hers.screenshot({ path: path.join(SCREENSHOTS, 'grace.png') });

    expect(problems).toEqual([]);
  }, 120_000);

  /** The user id local identity gives an email (`mintLocalToken`), and a typed client signed in as that person. */
  async function clientAs(email: string, tenantId: string) {
    const key = await loadOrCreateLocalSigningKey(keyFile);
    const token = await mintLocalToken(key, { email, tenantId, roles: ['Member'], expiresInSeconds: 300 });
    return createApiClient({ url: `${api.url}/trpc`, getToken: () => token });
  }

  it('makes, renames, switches and deletes conversations, and loads older messages as you scroll up', async () => {
    const tenant = `sessions-${Date.now()}`;
    const page = await open(await browser.newContext({ viewport: { width: 1100, height: 600 } }), 'sessions');
    await signIn(page, { email: 'lin@example.com', tenant, role: 'Member' });
    const sessions = page.getByTestId('session');
    await expect.poll(() => sessions.count()).toBe(1);

    await page.getByRole('button', { name: 'New chat', exact: true }).click();
    await expect.poll(() => sessions.count()).toBe(2);
    page.once('dialog', (dialog) => void dialog.accept('Renamed chat'));
    await sessions.first().getByRole('button', { name: /^Rename/ }).click();
    await expect.poll(() => sessions.first().textContent()).toContain('Renamed chat');
    await sessions.nth(1).getByRole('button', { name: 'New Chat', exact: true }).click();
    await expect.poll(() => page.locator('li.selected').textContent()).toContain('New Chat');
    // A second tab shows the renamed conversation; deleting it in the first moves the second away.
    const other = await open(page.context(), 'sessions tab 2');
    await other.getByTestId('session').filter({ hasText: 'Renamed chat' }).getByRole('button', { name: 'Renamed chat', exact: true }).click();
    await expect.poll(() => other.locator('li.selected').textContent()).toContain('Renamed chat');
    await sessions.first().getByRole('button', { name: /^Delete/ }).click();
    // (Switching to it in the second tab made it the active one: the next active one is new.)
    for (const tab of [page, other]) {
      await expect.poll(async () => (await tab.getByTestId('session').allTextContents()).join('|')).not.toContain('Renamed chat');
      await expect.poll(() => tab.locator('li.selected').textContent()).toContain('New Chat');
    }
    await other.close();

    // A long conversation, written elsewhere: 20 questions, each reply stopped at once.
    const lin = await clientAs('lin@example.com', tenant);
    const { id: sessionId } = await lin.chat.getActiveSession.query();
    for (let i = 1; i <= 20; i++) {
      await lin.chat.sendMessage.mutate({ sessionId, content: `Question ${i}` });
      await lin.chat.stopReply.mutate({ sessionId });
    }
    await page.reload();
    const messages = page.getByTestId('messages').locator('article');
    await expect.poll(() => messages.count()).toBe(30);
    await expect.poll(() => page.getByTestId('message-user').last().textContent()).toBe('Question 20');
    await page.getByTestId('messages').evaluate((box) => box.scrollTo({ top: 0 }));
    await expect.poll(() => messages.count()).toBe(40);
    await expect.poll(() => page.getByTestId('message-user').first().textContent()).toBe('Question 1');
    expect(problems).toEqual([]);
  }, 120_000);

  it('gets a new token and calls again when the API answers 401', async () => {
    const context = await browser.newContext();
    // Signed in with a token the API does not take (revoked, say), which the page believes good.
    const stale = { email: 'max@example.com', tenantId: 'refresh', role: 'Member', token: 'not.a.token', expiresAt: Date.now() + 3_600_000 };
    await context.addInitScript({ content: `localStorage.setItem('local-sign-in', ${JSON.stringify(JSON.stringify(stale))})` });
    // The stream's refusal comes back late, after the renewal and after calls with the new token
    // were accepted: it is made again with the new token, not taken for a second refusal.
    let streams = 0;
    await context.route('**/trpc/chat.events**', async (route) => {
      if (streams++ === 0) await new Promise((resolve) => setTimeout(resolve, 1_500));
      await route.continue();
    });
    const tab = await open(context, 'refresh', { expected: [401] });
    await expect.poll(() => tab.getByText('No messages yet').count(), { timeout: 15_000 }).toBe(1);
    await expect.poll(() => tab.locator('.live').textContent(), { timeout: 15_000 }).toBe('live');
    expect(await tab.getByRole('alert').count()).toBe(0);
  }, 60_000);

  it('does not ask again and again for an older page that fails', async () => {
    const tenant = `older-${Date.now()}`;
    const nia = await clientAs('nia@example.com', tenant);
    const { id: sessionId } = await nia.chat.getActiveSession.query();
    for (let i = 1; i <= 20; i++) {
      await nia.chat.sendMessage.mutate({ sessionId, content: `Line ${i}` });
      await nia.chat.stopReply.mutate({ sessionId });
    }
    // A window tall enough that the first page leaves room: the page asks for the next at once.
    const context = await browser.newContext({ viewport: { width: 1000, height: 3000 } });
    const page = await open(context, 'older', { expected: [0] });
    let olderAsked = 0;
    await page.route('**/trpc/chat.listMessages**', async (route) => {
      if (!decodeURIComponent(route.request().url()).includes('"cursor":"')) return route.continue();
      olderAsked += 1;
      await route.abort();
    });
    await signIn(page, { email: 'nia@example.com', tenant, role: 'Member' });
    await expect.poll(() => page.getByTestId('messages').locator('article').count()).toBe(30);
    await page.waitForTimeout(4_000);
    // The first attempt and its retries, then no more.
    expect(olderAsked).toBeGreaterThan(0);
    expect(olderAsked).toBeLessThanOrEqual(4);
  }, 60_000);

  it('says plainly when the person was removed from the organization (FORBIDDEN), and shows a retry notice while the API is down', async () => {
    const tenant = `removed-${Date.now()}`;
    const page = await open(await browser.newContext(), 'removed', { expected: [0, 403] });
    await signIn(page, { email: 'kim@example.com', tenant, role: 'Member' });
    await expect.poll(() => page.getByText('No messages yet').count()).toBe(1);

    // The API stops, then comes back: the page says so, and Retry brings the list back.
    await api.close();
    await page.getByRole('button', { name: 'New chat', exact: true }).click();
    await expect.poll(() => page.getByRole('alert').first().textContent(), { timeout: 15_000 }).toContain('unavailable');
    await page.screenshot({ path: path.join(SCREENSHOTS, 'api-down.png') });
    api = await startServer(config, pino({ level: 'silent' }));
    await page.getByRole('button', { name: 'New chat', exact: true }).click();
    await expect.poll(() => page.getByTestId('session').count(), { timeout: 15_000 }).toBe(2);

    // Frontegg removes Kim from the tenant: her page says so in a sentence.
    const userId = (await (await clientAs('kim@example.com', tenant)).me.query()).user.id;
    const removal = { eventKey: 'frontegg.user.removedFromTenant', eventContext: { tenantId: tenant, userId }, user: { id: userId, tenantId: tenant } };
    expect(await deliverWebhook(api.url, removal)).toMatchObject({ status: 200 });
    await expect.poll(() => page.getByText('You do not have access to this organization.').count(), { timeout: 5_000 }).toBeGreaterThan(0);
    await page.screenshot({ path: path.join(SCREENSHOTS, 'removed.png') });
  }, 90_000);


  it('has no "sign in as" in a production build, and says there is no way to sign in without Frontegg settings', async () => {
    const outDir = path.join(work, 'dist');
    // Under Vitest's NODE_ENV=test, a development build of React: "sign in as" must be out all the same.
    await build({ configFile: 'web/vite.config.ts', logLevel: 'silent', build: { outDir } });
    const assets = path.join(outDir, 'assets');
    const code = (await Promise.all((await readdir(assets)).filter((name) => name.endsWith('.js')).map((name) => readFile(path.join(assets, name), 'utf8')))).join('\n');
    expect(code.includes('/local-sign-in')).toBe(false);
    expect(code.includes('there is no way to sign in')).toBe(true);
  }, 60_000);

  it('mints "sign in as" tokens only for its own page: not for another origin, nor without JSON', async () => {
    const body = JSON.stringify({ email: 'eve@example.com', tenantId: 'acme', role: 'Admin' });
    const ask = (headers: Record<string, string>) => fetch(`${webUrl}/local-sign-in`, { method: 'POST', headers, body });
    expect((await ask({ origin: 'http://localhost:9999', 'content-type': 'application/json' })).status).toBe(403);
    expect((await ask({ origin: webUrl, 'content-type': 'text/plain' })).status).toBe(403);
    expect((await ask({ 'content-type': 'application/json' })).status).toBe(403);
    const own = await ask({ origin: webUrl, 'content-type': 'application/json' });
    expect(own.status).toBe(200);
    expect(await own.json()).toMatchObject({ token: expect.any(String) });
  });

  it('stops after one renewal when the API refuses the new token too, and says so', async () => {
    // The dev server signs with a key the API does not trust (another setup in the other terminal).
    const trusted = process.env.LOCAL_IDENTITY_KEY_FILE;
    process.env.LOCAL_IDENTITY_KEY_FILE = path.join(work, 'another-key.json');
    try {
      const page = await open(await browser.newContext(), 'untrusted', { expected: [401] });
      let mints = 0;
      page.on('request', (request) => {
        if (request.url().endsWith('/local-sign-in')) mints += 1;
      });
      await signIn(page, { email: 'ivy@example.com', tenant: 'untrusted', role: 'Member' });
      await expect.poll(() => page.getByText('Your sign-in is no longer accepted').count(), { timeout: 10_000 }).toBeGreaterThan(0);
      await page.waitForTimeout(3_000);
      // The sign-in, and one renewal.
      expect(mints).toBeLessThanOrEqual(2);
    } finally {
      process.env.LOCAL_IDENTITY_KEY_FILE = trusted;
    }
  }, 60_000);


});

// One clear line where there is no browser (a laptop without Debian's chromium).
it.skipIf(Boolean(chromiumPath))('(chat page in a browser: skipped, no Chromium found; apt-get install chromium, or set CHROMIUM_PATH)', () => {});