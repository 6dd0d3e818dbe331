import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sql } from 'drizzle-orm';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import { createApiClient } from '../../client/index.js';
import { openDatabase } from '../../db/database.js';
import { type RunningServer, startServer } from '../../server/app.js';
import { loadConfig } from '../../server/config.js';
import { clientError } from '../support/errors.js';
import { watchEvents } from '../support/events.js';
import { WEBHOOK_SECRET, deliverWebhook, fronteggUser, webhookBody } from '../support/frontegg-webhooks.js';
import { type TestIdentityProvider, startIdentityProvider } from '../support/identity-provider.js';
import { startLanguageModelServer } from '../support/language-model-server.js';
import { sample } from '../support/prometheus.js';

const databaseUrl = inject('databaseUrl');

describe('Prometheus metrics on METRICS_PORT', () => {
  let work: string;
  let idp: TestIdentityProvider;
  let model: Awaited<ReturnType<typeof startLanguageModelServer>>;
  let server: RunningServer;
  const scrape = async () => {
    const response = await fetch(server.metricsUrl as string);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    return response.text();
  };

  beforeAll(async () => {
    work = await mkdtemp(path.join(tmpdir(), 'metrics-'));
    idp = await startIdentityProvider();
    model = await startLanguageModelServer({ defaultText: 'Four words of reply.' });
    const config = loadConfig({
      ...(databaseUrl ? { DATABASE_URL: databaseUrl } : { PGLITE_DATA_DIR: path.join(work, 'pglite') }),
      FRONTEGG_ISSUER: idp.issuer,
      FRONTEGG_JWKS_URL: idp.jwksUrl,
      FRONTEGG_AUDIENCE: idp.audience,
      FRONTEGG_WEBHOOK_SECRET: WEBHOOK_SECRET,
      LLM_BASE_URL: model.baseUrl,
      LLM_MODEL: 'test-model',
      PORT: '0',
      METRICS_PORT: '0',
    });
    server = await startServer(config, pino({ level: 'silent' }));
  });
  afterAll(async () => {
    await server?.close();
    await model?.close();
    await idp?.close();
    await rm(work, { recursive: true, force: true });
  });

  it('serves the families an operator needs after the calls that produce them, with no id in any label; the API port serves none', async () => {
    expect(server.metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    expect(new URL(server.metricsUrl as string).port).not.toBe(new URL(server.url).port);
    const onApiPort = await fetch(`${server.url}/metrics`);
    expect(onApiPort.status).toBe(404);

    const ada = { sub: randomUUID(), tenantId: randomUUID(), email: 'ada@example.com' };
    const token = await idp.mintToken({ claims: ada });
    const client = createApiClient({ url: `${server.url}/trpc`, getToken: () => token });
    await client.me.query();
    const session = await client.chat.getActiveSession.query();
    const watch = watchEvents(client);
    await watch.connected();
    await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Hello there' });
    await watch.until(() => expect(watch.types()).toContain('reply.completed'));

    // Refused: no token, a token that is no JWT, and a path that is no procedure.
    expect((await clientError(createApiClient({ url: `${server.url}/trpc`, getToken: () => undefined }).me.query())).data?.code).toBe('UNAUTHORIZED');
    expect((await clientError(createApiClient({ url: `${server.url}/trpc`, getToken: () => 'not-a-token' }).me.query())).data?.code).toBe('UNAUTHORIZED');
    expect((await fetch(`${server.url}/trpc/${randomUUID()}`)).status).toBe(404);

    const invited = fronteggUser();
    expect((await deliverWebhook(server.url, webhookBody('frontegg.user.invitedToTenant', invited))).status).toBe(200);

    const text = await scrape();
    const expected: [string, Record<string, string>, number][] = [
      ['chat_requests_total', { procedure: 'me', code: 'OK' }, 1],
      ['chat_requests_total', { procedure: 'me', code: 'UNAUTHORIZED' }, 2],
      ['chat_requests_total', { procedure: 'chat.sendMessage', code: 'OK' }, 1],
      ['chat_requests_total', { procedure: 'chat.events', code: 'OK' }, 1],
      ['chat_requests_total', { procedure: '(none)', code: 'NOT_FOUND' }, 1],
      ['chat_request_duration_seconds_count', { procedure: 'chat.sendMessage' }, 1],
      ['chat_request_duration_seconds_bucket', { procedure: 'chat.sendMessage', le: '+Inf' }, 1],
      ['chat_token_refusals_total', { reason: 'missing' }, 1],
      ['chat_token_refusals_total', { reason: 'malformed' }, 1],
      ['chat_key_set_fetches_total', { outcome: 'ok' }, 1],
      ['chat_key_set_fetches_total', { outcome: 'failed' }, 0],
      ['chat_provisioned_total', { kind: 'organization', source: 'sign-in' }, 1],
      ['chat_provisioned_total', { kind: 'user', source: 'sign-in' }, 1],
      ['chat_provisioned_total', { kind: 'membership', source: 'sign-in' }, 1],
      ['chat_provisioned_total', { kind: 'organization', source: 'webhook' }, 1],
      ['chat_provisioned_total', { kind: 'user', source: 'webhook' }, 1],
      ['chat_provisioned_total', { kind: 'membership', source: 'webhook' }, 1],
      ['chat_member_cache_lookups_total', { result: 'miss' }, 1],
      ['chat_database_unavailable_total', {}, 0],
      ['chat_db_pool_size', {}, databaseUrl ? 10 : 1],
      ['chat_subscriptions_open', {}, 1],
      ['chat_replies_total', { outcome: 'complete' }, 1],
      // The test model reports 10 tokens in, and one a word out.
      ['chat_reply_tokens_total', { model: 'test-model', kind: 'input' }, 10],
      ['chat_reply_tokens_total', { model: 'test-model', kind: 'output' }, 4],
      ['chat_frontegg_webhooks_total', { outcome: 'applied' }, 1],
      // Ada wrote once: her bucket is not full.
      ['chat_write_limit_people', {}, 1],
    ];
    for (const [name, labels, value] of expected) expect([name, labels, sample(text, name, labels)]).toEqual([name, labels, value]);

    // Counts that depend on how many calls a page makes: present and moving.
    expect(sample(text, 'chat_token_verifications_total', { method: 'signature' })).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'chat_token_verifications_total', { method: 'remembered' })).toBeGreaterThanOrEqual(2);
    expect(sample(text, 'chat_member_cache_lookups_total', { result: 'hit' })).toBeGreaterThanOrEqual(2);
    // The stream's events: the session's update, both messages, the reply's text and its end.
    expect(sample(text, 'chat_events_sent_total')).toBeGreaterThanOrEqual(4);
    expect(sample(text, 'chat_db_pool_in_use')).toBeGreaterThanOrEqual(0);
    expect(sample(text, 'chat_db_pool_waiting')).toBe(0);
    // Node's default process metrics.
    for (const name of ['process_cpu_user_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds', 'nodejs_heap_size_used_bytes']) {
      expect(sample(text, name), name).toBeGreaterThanOrEqual(0);
    }

    // Ids and personal data stay out of the labels.
    for (const value of [ada.sub, ada.tenantId, ada.email, session.id, invited.id, invited.tenantId, invited.email]) {
      expect(text).not.toContain(value);
    }

    watch.close();
    await vi.waitFor(async () => expect(sample(await scrape(), 'chat_subscriptions_open')).toBe(0));
  });

  it('counts a stream the server ends after it opened by its code, not as a call refused before any procedure', async () => {
    const expiring = await idp.mintToken({ claims: { sub: randomUUID(), tenantId: randomUUID(), exp: Math.floor(Date.now() / 1000) + 2 } });
    const watch = watchEvents(createApiClient({ url: `${server.url}/trpc`, getToken: () => expiring }));
    await watch.connected();
    const before = await scrape();
    // Ended at its exp; the client may reconnect with it within the 5 s of clock skew allowed, to be ended again.
    await vi.waitFor(async () => expect(sample(await scrape(), 'chat_subscriptions_ended_total', { code: 'UNAUTHORIZED' })).toBeGreaterThanOrEqual(1), {
      timeout: 5_000,
      interval: 100,
    });
    watch.close();
    expect(sample(await scrape(), 'chat_requests_total', { procedure: '(none)', code: 'UNAUTHORIZED' })).toBe(
      sample(before, 'chat_requests_total', { procedure: '(none)', code: 'UNAUTHORIZED' }),
    );
  });

  it('answers only GET /metrics', async () => {
    const base = new URL(server.metricsUrl as string).origin;
    expect((await fetch(`${base}/`)).status).toBe(404);
    expect((await fetch(`${base}/trpc/me`)).status).toBe(404);
    expect((await fetch(`${base}/metrics`, { method: 'POST' })).status).toBe(405);
  });
});

describe('the pool readings', () => {
  // PGlite runs one statement at a time: a transaction left open holds its only connection.
  it('count the connections in use and the statements waiting for one', async () => {
    const database = databaseUrl ? openDatabase({ kind: 'postgres', url: databaseUrl, poolSize: 1 }) : openDatabase({ kind: 'pglite' });
    const table = `pool_probe_${randomUUID().replaceAll('-', '')}`;
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    try {
      await database.db.execute(sql.raw(`create table ${table} (id int primary key)`));
      expect(database.pool()).toEqual({ size: 1, inUse: 0, waiting: 0 });

      // The pool's one connection, held by a transaction until released.
      const first = database.db.transaction(async (tx) => {
        await tx.execute(sql.raw(`insert into ${table} values (1)`));
        await held;
      });
      // Drizzle sends a statement once it is awaited.
      const second = Promise.resolve(database.db.execute(sql.raw(`select count(*) from ${table}`)));
      await vi.waitFor(() => expect(database.pool()).toEqual({ size: 1, inUse: 1, waiting: 1 }));

      release();
      await Promise.all([first, second]);
      expect(database.pool()).toEqual({ size: 1, inUse: 0, waiting: 0 });
      await database.db.execute(sql.raw(`drop table ${table}`));
      if (databaseUrl) {
        // Statements outside a transaction: postgres.js sends them behind one another on a busy
        // connection rather than queueing them. Waiting all the same.
        const sleeps = Array.from({ length: 4 }, () => Promise.resolve(database.db.execute(sql`select pg_sleep(0.5)`)));
        await vi.waitFor(() => expect(database.pool()).toEqual({ size: 1, inUse: 1, waiting: 3 }));
        await Promise.all(sleeps);
        expect(database.pool()).toEqual({ size: 1, inUse: 0, waiting: 0 });
      }
    } finally {
      release();
      await database.close();
    }
  });
});
