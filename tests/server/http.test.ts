import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, expectTypeOf, it } from 'vitest';
import { MAX_BATCH_SIZE, MAX_BODY_BYTES, type RouterOutputs, createApiClient } from '../../client/index.js';
import { eq, sql } from 'drizzle-orm';
import { openDatabase } from '../../db/database.js';
import { users } from '../../db/schema.js';
import { serializeError } from '../../server/logger.js';
import { whileInsertsFail } from '../support/database.js';
import { clientError } from '../support/errors.js';
import { type TestApp, startHttpServer, startTestApp } from '../support/test-app.js';

let app: TestApp;
let http: Awaited<ReturnType<typeof startHttpServer>>;
beforeAll(async () => {
  app = await startTestApp();
  http = await startHttpServer(app);
});
afterAll(async () => {
  await http.close();
  await app.close();
});

/** A token for a new admin of `tenantId`, to look at its members. */
function admin(tenantId: string) {
  return app.idp.mintToken({ claims: { tenantId, roles: ['Admin'] } });
}


describe('health endpoints', () => {
  it('/healthz answers 200 while the process runs', async () => {
    const response = await fetch(`${http.url}/healthz`);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ status: 'ok' });
  });

  it('/readyz answers 200 when the database answers', async () => {
    expect((await fetch(`${http.url}/readyz`)).status).toBe(200);
  });

  it('/readyz answers 503 when the database does not, while /healthz stays 200', async () => {
    // A PostgreSQL that is not there: nothing listens on port 9 of loopback.
    const unreachable = openDatabase({ kind: 'postgres', url: 'postgres://postgres@127.0.0.1:9/none' });
    const down = await startHttpServer(app, { pingDatabase: unreachable.ping });
    try {
      const response = await fetch(`${down.url}/readyz`);
      expect(response.status).toBe(503);
      expect(await response.json()).toEqual({ status: 'unavailable', reason: 'database' });
      expect((await fetch(`${down.url}/healthz`)).status).toBe(200);
    } finally {
      await down.close();
      await unreachable.close();
    }
  });

  it('answers 404 elsewhere', async () => {
    expect((await fetch(`${http.url}/nope`)).status).toBe(404);
  });
});

describe('the typed client over HTTP', () => {
  it('gets `me`, with dates as Date objects', async () => {
    const tenantId = randomUUID();
    const token = await app.idp.mintToken({ claims: { tenantId, name: 'Grace Hopper' } });
    const me = await http.clientFor(token).me.query();
    expect(me.organization).toMatchObject({ id: tenantId, name: 'Grace Hopper' });
    expect(me.user.createdAt).toBeInstanceOf(Date);
    expect(me.user.lastLogin).toBeInstanceOf(Date);
    expectTypeOf(me).toEqualTypeOf<RouterOutputs['me']>();
    expectTypeOf(me.role).toEqualTypeOf<'admin' | 'member' | 'viewer'>();
  });

  it('sends a batch as one request, provisioned once', async () => {
    const tenantId = randomUUID();
    const token = await app.idp.mintToken({ claims: { tenantId } });
    let requests = 0;
    const client = createApiClient({
      url: `${http.url}/trpc`,
      getToken: () => token,
      fetch: (input, init) => {
        requests += 1;
        return fetch(input, init);
      },
    });
    const [a, b, members] = await Promise.all([client.me.query(), client.me.query(), client.org.members.query()]);
    expect(requests).toBe(1);
    expect(a.user.id).toBe(b.user.id);
    expect(members.items).toHaveLength(1);
    const created = app.logs.filter((line) => line.organizationId === tenantId && line.msg === 'Created organization');
    expect(created).toHaveLength(1);
  });

  it('provisions once for 50 concurrent first requests of one user', async () => {
    const tenantId = randomUUID();
    const token = await app.idp.mintToken({ claims: { tenantId } });
    // 50 clients, so 50 separate HTTP requests rather than one batch.
    const answers = await Promise.all(Array.from({ length: 50 }, () => http.clientFor(token).me.query()));
    expect(new Set(answers.map((me) => me.user.id)).size).toBe(1);
    const members = await http.clientFor(await admin(tenantId)).org.members.query();
    expect(members.items.map((m) => m.userId)).toContain(answers[0]!.user.id);
    const creations = app.logs.filter((line) => line.organizationId === tenantId && line.msg === 'Created organization');
    expect(creations).toHaveLength(1);
  });

  it('gives 20 users of a new tenant signing in at once one organization and 20 memberships', async () => {
    const tenantId = randomUUID();
    const tokens = await Promise.all(
      Array.from({ length: 20 }, (_, i) => app.idp.mintToken({ claims: { tenantId, name: `Person ${i}`, roles: ['Editor'] } })),
    );
    const answers = await Promise.all(tokens.map((token) => http.clientFor(token).me.query()));
    expect(new Set(answers.map((me) => me.organization.name)).size).toBe(1);
    expect(new Set(answers.map((me) => me.user.id)).size).toBe(20);
    const members = await http.clientFor(await admin(tenantId)).org.members.query({ limit: 100 });
    expect(members.items).toHaveLength(21);
  });

  it('asks for the token on every request, so a refreshed token is used', async () => {
    const [tenantA, tenantB] = [randomUUID(), randomUUID()];
    let token = await app.idp.mintToken({ claims: { tenantId: tenantA } });
    const client = createApiClient({ url: `${http.url}/trpc`, getToken: async () => token });
    expect((await client.me.query()).organization.id).toBe(tenantA);
    token = await app.idp.mintToken({ claims: { tenantId: tenantB } });
    expect((await client.me.query()).organization.id).toBe(tenantB);
  });

  it('answers 401 UNAUTHORIZED without a token', async () => {
    const error = await clientError(http.clientFor(undefined).me.query());
    expect(error.data).toMatchObject({ code: 'UNAUTHORIZED', httpStatus: 401, authReason: 'missing' });
  });

  it('tells a frontend that its token expired, so it knows to refresh', async () => {
    const now = Math.floor(Date.now() / 1000);
    const token = await app.idp.mintToken({ claims: { iat: now - 600, exp: now - 60 } });
    const error = await clientError(http.clientFor(token).me.query());
    expect(error.message).toMatch(/expired/);
    expect(error.data).toMatchObject({ code: 'UNAUTHORIZED', httpStatus: 401, authReason: 'expired' });
  });

  it('answers 403 FORBIDDEN to a non-admin listing members without fe.secure.read.users', async () => {
    const token = await app.idp.mintToken({ claims: { roles: ['ReadOnly'], permissions: [] } });
    const error = await clientError(http.clientFor(token).org.members.query());
    expect(error.data).toMatchObject({ code: 'FORBIDDEN', httpStatus: 403 });
  });

  it('answers 400 BAD_REQUEST with validation details for bad input', async () => {
    const token = await app.idp.mintToken();
    const error = await clientError(http.clientFor(token).org.members.query({ limit: 1000 }));
    expect(error.data).toMatchObject({ code: 'BAD_REQUEST', httpStatus: 400 });
    expect(error.data?.validation?.fieldErrors).toHaveProperty('limit');
  });
});

describe('connection limits', () => {
  /** A raw connection to `server`; resolves when the server closes it, with how long that took. */
  async function closedAfter(server: { url: string }, send: string) {
    const socket = net.connect(Number(new URL(server.url).port), '127.0.0.1');
    await once(socket, 'connect');
    const started = performance.now();
    socket.write(send);
    socket.resume();
    await once(socket, 'close');
    return performance.now() - started;
  }

  it('closes a connection on which nothing moves for the idle timeout', async () => {
    const impatient = await startHttpServer(app, { idleTimeoutMs: 300 });
    try {
      // Half a request, then silence: long before the 10 s headers timeout, the idle one acts.
      expect(await closedAfter(impatient, 'GET /healthz HTTP/1.1\r\n')).toBeLessThan(5_000);
    } finally {
      await impatient.close();
    }
  });

  it("cuts a client that sends its headers slowly at the 10 s headers timeout, not at Node's 30 s check", async () => {
    // A server of its own, so that Node's own check (every 30 s before) could not happen to fall
    // near the 10 s mark.
    const fresh = await startHttpServer(app);
    const socket = net.connect(Number(new URL(fresh.url).port), '127.0.0.1');
    await once(socket, 'connect');
    const started = performance.now();
    // A byte every 200 ms: never idle, never done.
    const drip = setInterval(() => socket.write('x'), 200);
    socket.write('GET /healthz HTTP/1.1\r\nX-Slow: ');
    socket.resume();
    try {
      await once(socket, 'close');
    } finally {
      clearInterval(drip);
      await fresh.close();
    }
    const seconds = (performance.now() - started) / 1000;
    expect(seconds).toBeGreaterThanOrEqual(9.5);
    expect(seconds).toBeLessThan(20);
  }, 20_000);

  it('refuses connections beyond the maximum', async () => {
    const small = await startHttpServer(app, { maxConnections: 1 });
    const first = net.connect(Number(new URL(small.url).port), '127.0.0.1');
    try {
      await once(first, 'connect');
      // The server takes the first; a second is closed as soon as it is accepted.
      await closedAfter(small, '');
      expect(first.destroyed).toBe(false);
    } finally {
      first.destroy();
      await small.close();
    }
  });
});

describe('request limits', () => {
  async function notProvisioned(sub: string) {
    expect(await app.db.select().from(users).where(eq(users.id, sub))).toEqual([]);
  }

  it(`refuses a body over ${MAX_BODY_BYTES} bytes with 413, before any database work`, async () => {
    const sub = randomUUID();
    const token = await app.idp.mintToken({ claims: { sub } });
    const body = JSON.stringify({ json: { sessionId: randomUUID(), content: 'x'.repeat(MAX_BODY_BYTES) } });
    const response = await fetch(`${http.url}/trpc/chat.sendMessage`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body,
    });
    expect(response.status).toBe(413);
    expect(JSON.parse(await response.text()).error.json.data.code).toBe('PAYLOAD_TOO_LARGE');
    await notProvisioned(sub);
  });

  it('answers a body just under the limit normally (here: 400 for content over 32000 characters)', async () => {
    const token = await app.idp.mintToken();
    const content = 'x'.repeat(MAX_BODY_BYTES - 1000);
    const error = await clientError(http.clientFor(token).chat.sendMessage.mutate({ sessionId: randomUUID(), content }));
    expect(error.data?.httpStatus).toBe(400);
  });

  it(`refuses a batch of more than ${MAX_BATCH_SIZE} calls with 400, before any database work`, async () => {
    const sub = randomUUID();
    const token = await app.idp.mintToken({ claims: { sub } });
    const paths = Array.from({ length: MAX_BATCH_SIZE + 1 }, () => 'me').join(',');
    const response = await fetch(`${http.url}/trpc/${paths}?batch=1&input={}`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(response.status).toBe(400);
    expect(await response.text()).toContain('Batch call exceeds maximum size');
    await notProvisioned(sub);

    const atLimit = Array.from({ length: MAX_BATCH_SIZE }, () => 'me').join(',');
    const accepted = await fetch(`${http.url}/trpc/${atLimit}?batch=1&input={}`, { headers: { authorization: `Bearer ${token}` } });
    expect(accepted.status).toBe(200);
  });

  it(`makes the typed client split its batches at ${MAX_BATCH_SIZE} calls`, async () => {
    const token = await app.idp.mintToken();
    const batchSizes: number[] = [];
    const client = createApiClient({
      url: `${http.url}/trpc`,
      getToken: () => token,
      fetch: (input, init) => {
        batchSizes.push(new URL(String(input)).pathname.split(',').length);
        return fetch(input, init);
      },
    });
    const answers = await Promise.all(Array.from({ length: 2 * MAX_BATCH_SIZE + 5 }, () => client.me.query()));
    expect(answers).toHaveLength(2 * MAX_BATCH_SIZE + 5);
    expect(batchSizes.sort((a, b) => b - a)).toEqual([MAX_BATCH_SIZE, MAX_BATCH_SIZE, 5]);
  });
});

describe('requests the server cannot use', () => {
  const json = { 'content-type': 'application/json' };
  const superjsonMeta = { json: { sessionId: randomUUID(), content: 'x' }, meta: { values: { '__proto__.polluted': ['class', 'X'] } } };
  it.each([
    ['a body that is not JSON', 'POST', '/trpc/chat.sendMessage', json, '{"json":', 400],
    ['a text/plain body', 'POST', '/trpc/chat.sendMessage', { 'content-type': 'text/plain' }, 'hello', 415],
    ['an octet-stream body', 'POST', '/trpc/chat.sendMessage', { 'content-type': 'application/octet-stream' }, 'xx', 400],
    ['a broken multipart body', 'POST', '/trpc/chat.sendMessage', { 'content-type': 'multipart/form-data; boundary=x' }, '--x', 400],
    ['a superjson payload aimed at prototypes', 'POST', '/trpc/chat.sendMessage', json, JSON.stringify(superjsonMeta), 400],
    ['a mutation by GET', 'GET', '/trpc/chat.sendMessage?input={}', {}, undefined, 405],
    ['a query by POST', 'POST', '/trpc/me', json, '{}', 405],
    ['PUT', 'PUT', '/trpc/me', json, '{}', 405],
    ['a procedure that does not exist', 'GET', '/trpc/chat.constructor', {}, undefined, 404],
    ['__proto__ as a path', 'GET', '/trpc/__proto__', {}, undefined, 404],
    ['a 20 KB URL', 'GET', `/trpc/me?input=${'a'.repeat(20_000)}`, {}, undefined, 431],
  ] as const)('%s: a 4xx with no internals, and nothing written', async (_, method, path, headers, body, status) => {
    const sub = randomUUID();
    const token = await app.idp.mintToken({ claims: { sub } });
    const response = await fetch(`${http.url}${path}`, {
      method,
      headers: { ...headers, authorization: `Bearer ${token}` },
      body,
    });
    expect(response.status).toBe(status);
    const text = await response.text();
    expect(text).not.toMatch(/stack|\.ts:\d+|node_modules|Unexpected|Maximum call stack/);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(await app.db.select().from(users).where(eq(users.id, sub))).toEqual([]);
  });
});

describe('error responses', () => {
  it('carry a request id and never a stack trace or the token', async () => {
    const token = await app.idp.mintToken({ claims: { iss: 'https://evil.example' } });
    const response = await fetch(`${http.url}/trpc/me`, { headers: { authorization: `Bearer ${token}` } });
    expect(response.status).toBe(401);
    expect(response.headers.get('x-request-id')).toMatch(/^[\w-]+$/);
    const body = await response.text();
    expect(body).not.toMatch(/stack|at .*\.ts:\d+/);
    expect(body).not.toContain(token);
  });

  it('are logged once each, with the request id the response carries; validation details only for BAD_REQUEST', async () => {
    const token = await app.idp.mintToken();
    const requestId = `req-${randomUUID()}`;
    // One batch of three calls: one answers, two are refused for different reasons.
    const response = await fetch(
      `${http.url}/trpc/me,chat.getSession,org.members?batch=1&input=${encodeURIComponent(
        JSON.stringify({ 1: { json: { sessionId: randomUUID() } }, 2: { json: { limit: 0 } } }),
      )}`,
      { headers: { authorization: `Bearer ${token}`, 'x-request-id': requestId } },
    );
    expect(response.headers.get('x-request-id')).toBe(requestId);
    const [me, notFound, invalid] = (await response.json()) as { result?: unknown; error?: { json: { data: Record<string, unknown> } } }[];
    expect(me?.result).toBeDefined();
    expect(notFound?.error?.json.data).toMatchObject({ code: 'NOT_FOUND', validation: null });
    expect(invalid?.error?.json.data).toMatchObject({ code: 'BAD_REQUEST', validation: { fieldErrors: { limit: [expect.any(String)] } } });

    const refused = app.logs.filter((line) => line.requestId === requestId && line.msg === 'Request refused');
    expect(refused.map((line) => [line.path, line.code]).sort()).toEqual([
      ['chat.getSession', 'NOT_FOUND'],
      ['org.members', 'BAD_REQUEST'],
    ]);
  });

  it('replace a request id a client sends that is not a plain token', async () => {
    for (const sent of ['has spaces/and "quotes"', 'x'.repeat(129), '<script>']) {
      const response = await fetch(`${http.url}/healthz`, { headers: { 'x-request-id': sent } });
      expect(response.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    }
  });

  it('hide database errors behind a generic message', async () => {
    const sub = randomUUID();
    const failure = { table: 'users', column: 'id', value: sub, message: 'relation secret_table violates something' };
    const response = await whileInsertsFail(app.db, failure, async () => {
      const token = await app.idp.mintToken({ claims: { sub } });
      return fetch(`${http.url}/trpc/me`, { headers: { authorization: `Bearer ${token}` } });
    });
    expect(response.status).toBe(500);
    const body = await response.text();
    expect(body).toContain('Internal server error');
    expect(body).not.toMatch(/secret_table|insert into|stack/i);
    // The operator finds the real cause in the log line of that request.
    const requestId = response.headers.get('x-request-id');
    const logged = app.logs.find((line) => line.requestId === requestId && line.msg === 'Request failed');
    expect(JSON.stringify(logged)).toContain('secret_table');
  });
});

describe('the log of a failed statement', () => {
  it('names the statement and the error code, never the text of the message sent', async () => {
    const client = http.clientFor(await app.idp.mintToken());
    const session = await client.chat.getActiveSession.query();
    // A pasted stack trace: a log that kept an error's stack "from its first frame on" took it for one.
    const secret = randomUUID();
    const content = `my private words:\n    at render (app.js:10) ${secret}`;
    const failure = { table: 'chat_messages', column: 'content', value: content, message: 'refused by the test' };
    const error = await whileInsertsFail(app.db, failure, () =>
      clientError(client.chat.sendMessage.mutate({ sessionId: session.id, content })),
    );
    expect(error.data?.httpStatus).toBe(500);

    const failed = app.logs.find((line) => line.msg === 'Request failed' && line.path === 'chat.sendMessage');
    expect(failed).toBeDefined();
    const logged = JSON.stringify(failed);
    expect(logged).toContain('insert into \\"chat_messages\\"');
    expect(logged).toContain('"code":"P0001"');
    expect(logged).toContain('refused by the test');
    expect(logged).toContain('sendMessage');
    expect(JSON.stringify(app.logs)).not.toContain(secret);
  });

  it('keeps what a refused request sent out of the log: bad JSON, invalid input', async () => {
    const token = await app.idp.mintToken();
    const secret = randomUUID();
    const send = (body: string) =>
      fetch(`${http.url}/trpc/chat.sendMessage`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body,
      });
    const badJson = await send(`{"json": {"content": "${secret}"`);
    expect(badJson.status).toBe(400);
    const invalid = await send(JSON.stringify({ json: { sessionId: `not a uuid ${secret}`, content: secret } }));
    expect(invalid.status).toBe(400);
    const refused = app.logs.filter((line) => line.msg === 'Request refused' && line.path === 'chat.sendMessage');
    expect(refused.find((line) => line.requestId === invalid.headers.get('x-request-id'))).toMatchObject({
      code: 'BAD_REQUEST',
      invalidFields: ['sessionId'],
    });
    expect(refused.some((line) => line.requestId === badJson.headers.get('x-request-id'))).toBe(true);
    expect(JSON.stringify(app.logs)).not.toContain(secret);
  });

  it('never carries the email of a person whose first sign-in failed', async () => {
    const sub = randomUUID();
    const email = `someone.${randomUUID()}@example.com`;
    const failure = { table: 'users', column: 'id', value: sub, message: 'refused by the test' };
    const token = await app.idp.mintToken({ claims: { sub, email } });
    const error = await whileInsertsFail(app.db, failure, () => clientError(http.clientFor(token).me.query()));
    expect(error.data?.httpStatus).toBe(500);
    const failed = app.logs.filter((line) => line.msg === 'Request failed' && JSON.stringify(line).includes('refused by the test'));
    expect(failed.length).toBeGreaterThan(0);
    expect(JSON.stringify(app.logs)).not.toContain(email);
    expect(JSON.stringify(app.logs)).not.toContain(token);
  });

  it('withholds the message of a data exception, which quotes the value', async () => {
    const secret = randomUUID();
    const error = await app.db.execute(sql`select ${`not a uuid\n    at render (app.js:10) ${secret}`}::uuid`).then(
      () => undefined,
      (thrown: unknown) => thrown,
    );
    // The driver's own error does quote it: what the log must not repeat.
    expect(String((error as Error).cause)).toContain(secret);
    const serialized = JSON.stringify(serializeError(error));
    expect(serialized).not.toContain(secret);
    expect(serialized).toContain('"code":"22P02"');
    expect(serialized).toContain('select $1::uuid');
  });
});
