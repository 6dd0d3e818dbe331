import { randomUUID } from 'node:crypto';
import { and, count, eq } from 'drizzle-orm';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { openDatabase } from '../../db/database.js';
import { chatSessions } from '../../db/schema.js';
import { clientError } from '../support/errors.js';
import { type TestApp, startHttpServer, startTestApp } from '../support/test-app.js';

const databaseUrl = inject('databaseUrl');

let app: TestApp;
beforeAll(async () => {
  app = await startTestApp();
});
afterAll(() => app.close());

const person = () => ({ sub: randomUUID(), tenantId: randomUUID() });

describe("one person's heavy calls in progress", () => {
  it('are capped: beyond HEAVY_CALLS_PER_PERSON they answer TOO_MANY_REQUESTS at once; cheap calls and colleagues are not', async () => {
    const ada = person();
    const caller = await app.as(ada);
    await caller.chat.getActiveSession();
    const grace = await app.as({ sub: randomUUID(), tenantId: ada.tenantId });

    const heavy = await Promise.allSettled(Array.from({ length: 30 }, () => caller.chat.listSessions()));
    const cheap = await Promise.allSettled(Array.from({ length: 20 }, () => caller.chat.getActiveSession()));
    const colleague = await grace.chat.listSessions();

    const refused = heavy.filter((result) => result.status === 'rejected');
    // The default share: one full batch.
    expect(heavy.length - refused.length).toBe(10);
    expect(refused).toHaveLength(20);
    for (const result of refused) {
      expect(result).toMatchObject({ reason: { code: 'TOO_MANY_REQUESTS', message: expect.stringMatching(/too many requests in progress/) } });
    }
    expect(cheap.every((result) => result.status === 'fulfilled')).toBe(true);
    expect(colleague.items).toHaveLength(0);
    // Only people with calls under way are counted.
    expect(app.deps.heavyCalls.people).toBe(0);
    // Once the calls are done, the person has their full share again.
    expect((await Promise.all(Array.from({ length: 10 }, () => caller.chat.listSessions()))).length).toBe(10);
  });
});

// PGlite has one connection and no locks to wait for between connections.
describe.skipIf(!databaseUrl)('lock waits', () => {
  it('end after DATABASE_LOCK_TIMEOUT_MS with 503, so callers queueing on one person’s rows cannot hold the pool', async () => {
    const impatient = openDatabase({ kind: 'postgres', url: databaseUrl as string, lockTimeoutMs: 200 });
    const http = await startHttpServer(app, { db: impatient.db });
    const holder = postgres(databaseUrl as string, { max: 1, onnotice: () => {} });
    try {
      const ada = person();
      const client = http.clientFor(await app.idp.mintToken({ claims: ada }));
      await client.chat.getActiveSession.query();
      // Another transaction holds Ada's membership row, as a stuck write of hers would.
      const reserved = await holder.reserve();
      await reserved`begin`;
      await reserved`select 1 from organization_members where user_id = ${ada.sub} for update`;
      const started = performance.now();
      const error = await clientError(client.chat.createSession.mutate({ title: 'waits' }));
      expect(error.data?.httpStatus).toBe(503);
      expect(performance.now() - started).toBeLessThan(3_000);
      await reserved`rollback`;
      reserved.release();
      expect((await client.chat.createSession.mutate({ title: 'after' })).title).toBe('after');
    } finally {
      await holder.end();
      await http.close();
      await impatient.close();
    }
  });

  it("100 concurrent createSession batches of one person leave another tenant's calls answering", async () => {
    const http = await startHttpServer(app);
    try {
      const ada = person();
      const adaClient = http.clientFor(await app.idp.mintToken({ claims: ada }));
      const other = http.clientFor(await app.idp.mintToken({ claims: person() }));
      await Promise.all([adaClient.chat.getActiveSession.query(), other.chat.getActiveSession.query()]);

      // 1,000 calls made at once: the client sends them as 100 batches of 10.
      const flood = Promise.allSettled(Array.from({ length: 1_000 }, (_, i) => adaClient.chat.createSession.mutate({ title: `flood ${i}` })));
      const latencies: number[] = [];
      for (let i = 0; i < 10; i++) {
        const started = performance.now();
        await other.chat.getActiveSession.query();
        latencies.push(performance.now() - started);
      }
      const results = await flood;

      // Before the cap and lock_timeout, this took seconds (11 s at worst, 1.8 s here): well under
      // one now, since at most one batch of Ada's calls is in progress at a time.
      expect(Math.max(...latencies)).toBeLessThan(1_000);
      const refused = results.filter((result) => result.status === 'rejected');
      expect(refused.length).toBeGreaterThanOrEqual(900);
      const codes = new Set(results.map((result) => (result.status === 'fulfilled' ? 'ok' : (result.reason as { data?: { code?: string } }).data?.code)));
      expect([...codes].every((code) => code === 'ok' || code === 'TOO_MANY_REQUESTS')).toBe(true);
      expect(codes.has('ok')).toBe(true);
      const [active] = await app.db
        .select({ n: count() })
        .from(chatSessions)
        .where(and(eq(chatSessions.userId, ada.sub), eq(chatSessions.isActive, true)));
      expect(active?.n).toBe(1);
    } finally {
      await http.close();
    }
  });
});
