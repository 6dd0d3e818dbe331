import { randomUUID } from 'node:crypto';
import { eq, inArray } from 'drizzle-orm';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { type DatabaseHandle, openDatabase } from '../../db/database.js';
import { chatMessages, users } from '../../db/schema.js';
import { clientError } from '../support/errors.js';
import { type ProxyState, startTcpProxy } from '../support/tcp-proxy.js';
import { type TestApp, startHttpServer, startTestApp } from '../support/test-app.js';

const databaseUrl = inject('databaseUrl');

// Short enough that a stalled connection fails within a test: silence limit = 1 s + 5 s.
const STATEMENT_TIMEOUT_MS = 1_000;
const CONNECT_TIMEOUT_SECONDS = 1;

describe('input limits', () => {
  let app: TestApp;
  beforeAll(async () => {
    app = await startTestApp();
  });
  afterAll(() => app.close());

  it('are checked before any database work: a first request with bad input provisions nobody', async () => {
    const sub = randomUUID();
    const caller = await app.as({ sub });
    const tooLong = 'x'.repeat(32_001);
    await expect(caller.chat.sendMessage({ sessionId: randomUUID(), content: tooLong })).rejects.toMatchObject({
      code: 'BAD_REQUEST',
    });
    await expect(caller.chat.renameSession({ sessionId: 'not-a-uuid', title: 'x' })).rejects.toMatchObject({
      code: 'BAD_REQUEST',
    });
    await expect(caller.org.members({ limit: 1000 })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    expect(await app.db.select().from(users).where(eq(users.id, sub))).toEqual([]);
  });
});

// PGlite runs inside the test process: there is no connection to lose.
describe.skipIf(!databaseUrl)('with the database behind a proxy that the test cuts', () => {
  let app: TestApp;
  let proxy: Awaited<ReturnType<typeof startTcpProxy>>;
  let proxied: DatabaseHandle;
  let http: Awaited<ReturnType<typeof startHttpServer>>;

  beforeAll(async () => {
    app = await startTestApp();
    const url = new URL(databaseUrl as string);
    proxy = await startTcpProxy({ host: url.hostname, port: Number(url.port || 5432) });
    proxied = openDatabase({
      kind: 'postgres',
      url: proxy.urlFor(url.toString()),
      connectTimeoutSeconds: CONNECT_TIMEOUT_SECONDS,
      statementTimeoutMs: STATEMENT_TIMEOUT_MS,
    });
    http = await startHttpServer(app, { db: proxied.db, pingDatabase: proxied.ping });
  });
  afterEach(() => proxy.setState('up'));
  afterAll(async () => {
    await http.close();
    await proxied.close();
    await proxy.close();
    await app.close();
  });

  async function get(path: string, token?: string) {
    const response = await fetch(`${http.url}${path}`, token ? { headers: { authorization: `Bearer ${token}` } } : {});
    return { status: response.status, requestId: response.headers.get('x-request-id'), body: await response.text() };
  }

  describe.each(['cut', 'stall'] satisfies ProxyState[])('an outage (%s)', (state) => {
    it('answers 503 within seconds with a generic message, reports not ready, and recovers without a restart', async () => {
      const token = await app.idp.mintToken();
      const client = http.clientFor(token);
      const session = await client.chat.getActiveSession.query();

      proxy.setState(state);
      const started = performance.now();
      const failed = await get('/trpc/chat.getActiveSession', token);
      const elapsedMs = performance.now() - started;
      // "Seconds, not minutes": the silence limit (statement timeout + 5 s) bounds a stalled query.
      expect(elapsedMs).toBeLessThan(15_000);
      expect(failed.status).toBe(503);
      expect(JSON.parse(failed.body).error.json).toMatchObject({
        message: 'The service is temporarily unavailable; try again shortly',
        data: { code: 'SERVICE_UNAVAILABLE', httpStatus: 503 },
      });
      expect(failed.body).not.toMatch(/postgres|127\.0\.0\.1|ECONN|CONNECT|select|insert|stack|\.ts:/i);
      expect(failed.body).not.toContain(String(proxy.port));

      // Logged once, at error level, with the id the response carried, and with the cause.
      const lines = app.logs.filter((line) => line.requestId === failed.requestId && (line.level as number) >= 50);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({ msg: 'Request failed', code: 'SERVICE_UNAVAILABLE', status: 503 });
      expect(JSON.stringify(lines[0]?.err)).toMatch(/ETIMEDOUT|ECONNRESET|CONNECTION_|CONNECT_TIMEOUT|No answer/);

      const write = await clientError(client.chat.sendMessage.mutate({ sessionId: session.id, content: 'lost?' }));
      expect(write.data?.httpStatus).toBe(503);

      expect((await get('/healthz')).status).toBe(200);
      expect((await get('/readyz')).status).toBe(503);

      proxy.setState('up');
      expect((await get('/readyz')).status).toBe(200);
      expect(await client.chat.getActiveSession.query()).toEqual(session);
      const { message } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'after the outage' });
      expect(message.content).toBe('after the outage');
    });
  });

  it('answers 503 when a call outlasts the procedure timeout, whatever it waits for', async () => {
    // A pool whose own limits would wait 65 s on a stalled connection, behind a 1 s procedure timeout.
    const patient = openDatabase({ kind: 'postgres', url: proxy.urlFor(databaseUrl as string), statementTimeoutMs: 60_000 });
    const server = await startHttpServer(app, { db: patient.db, pingDatabase: patient.ping, procedureTimeoutMs: 1_000 });
    try {
      const token = await app.idp.mintToken();
      await server.clientFor(token).me.query();
      proxy.setState('stall');
      const started = performance.now();
      const error = await clientError(server.clientFor(token).chat.getActiveSession.query());
      expect(error.data?.httpStatus).toBe(503);
      expect(error.message).toBe('The service is temporarily unavailable; try again shortly');
      expect(performance.now() - started).toBeLessThan(5_000);
      const logged = app.logs.find((line) => line.msg === 'Request failed' && JSON.stringify(line.err).includes('No answer within 1000 ms'));
      expect(logged).toBeDefined();
    } finally {
      proxy.setState('up');
      await server.close();
      await patient.close();
    }
  });

  it('answers 503, not 500, to a first call whose provisioning meets the outage, and counts each in chat_database_unavailable_total', async () => {
    const unavailableSoFar = async () => (await app.deps.metrics.databaseUnavailable.get()).values[0]?.value ?? 0;
    const before = await unavailableSoFar();
    proxy.setState('cut');
    for (const call of [
      (client: ReturnType<typeof http.clientFor>) => client.me.query(),
      (client: ReturnType<typeof http.clientFor>) => client.chat.getActiveSession.query(),
      (client: ReturnType<typeof http.clientFor>) => client.chat.listSessions.query({ limit: 5 }),
    ]) {
      const error = await clientError(call(http.clientFor(await app.idp.mintToken())));
      expect(error.data?.httpStatus).toBe(503);
      expect(error.message).toBe('The service is temporarily unavailable; try again shortly');
    }
    expect((await unavailableSoFar()) - before).toBe(3);
  });

  it('checks input before the database: bad input answers 400 even while the database is down', async () => {
    const token = await app.idp.mintToken();
    proxy.setState('cut');
    const error = await clientError(http.clientFor(token).chat.sendMessage.mutate({ sessionId: 'nope', content: '' }));
    expect(error.data?.httpStatus).toBe(400);
  });

  it('loses no acknowledged write: every sendMessage that answered success is stored', async () => {
    const token = await app.idp.mintToken();
    const client = http.clientFor(token);
    const session = await client.chat.getActiveSession.query();
    const acknowledged = new Map<string, string>();
    const refusals: unknown[] = [];

    async function writer(name: string) {
      for (let i = 0; i < 25; i += 1) {
        const content = `${name} #${i}`;
        try {
          const { message } = await client.chat.sendMessage.mutate({ sessionId: session.id, content });
          acknowledged.set(message.id, content);
        } catch (error) {
          const { data, message } = error as { data?: { httpStatus?: number }; message: string };
          refusals.push(data?.httpStatus === 429 ? `429 ${message}` : data?.httpStatus);
        }
      }
    }
    const writers = Promise.all(Array.from({ length: 8 }, (_, index) => writer(`writer ${index}`)));
    await new Promise((resolve) => setTimeout(resolve, 150));
    proxy.setState('cut');
    await new Promise((resolve) => setTimeout(resolve, 400));
    proxy.setState('up');
    await writers;

    // Both happened: writes before, during and after the outage.
    expect(acknowledged.size).toBeGreaterThan(0);
    expect(refusals.length).toBeGreaterThan(0);
    // A call the outage timed out (503) holds its place among the person's heavy calls until its
    // statement ends, so a writer's next call may find them all taken: 429, also nothing written.
    expect(refusals).toContain(503);
    const tooMany = '429 You have too many requests in progress; try again shortly';
    expect(new Set(refusals.filter((status) => status !== 503 && status !== tooMany))).toEqual(new Set());
    // Read past the proxy, straight from the database.
    const stored = await app.db
      .select({ id: chatMessages.id, content: chatMessages.content })
      .from(chatMessages)
      .where(inArray(chatMessages.id, [...acknowledged.keys()]));
    expect(new Map(stored.map((row) => [row.id, row.content]))).toEqual(acknowledged);
  });
});
