import { randomUUID } from 'node:crypto';
import { TRPCError } from '@trpc/server';
import { and, count, eq } from 'drizzle-orm';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { chatMessages, chatSessions } from '../../db/schema.js';
import { WriteRateLimitedError } from '../../server/trpc.js';
import { MAX_PEOPLE, createWriteLimit } from '../../server/write-limit.js';
import { clientError } from '../support/errors.js';
import { type TestApp, startHttpServer, startTestApp } from '../support/test-app.js';

const person = () => ({ sub: randomUUID(), tenantId: randomUUID() });

describe('RATE_LIMIT_WRITES_PER_MINUTE', () => {
  // The production default: 60 a minute, 20 at once.
  let limited: TestApp;
  let http: Awaited<ReturnType<typeof startHttpServer>>;
  beforeAll(async () => {
    limited = await startTestApp({ writesPerMinute: 60 });
    http = await startHttpServer(limited);
  });
  afterAll(async () => {
    await http.close();
    await limited.close();
  });

  const storedMessages = async (sessionId: string) =>
    (await limited.db.select({ n: count() }).from(chatMessages).where(eq(chatMessages.sessionId, sessionId)))[0]?.n;

  it('answers 429 with Retry-After and retryAfterSeconds past the burst, stores nothing, slows no colleague and no read, and lets the person write again after the wait', async () => {
    const ada = person();
    const token = await limited.idp.mintToken({ claims: ada });
    const client = http.clientFor(token);
    const session = await client.chat.getActiveSession.query();

    for (let i = 0; i < 20; i += 1) await client.chat.sendMessage.mutate({ sessionId: session.id, content: `message ${i}` });
    const refused = await clientError(client.chat.sendMessage.mutate({ sessionId: session.id, content: 'one too many' }));
    expect(refused.data?.code).toBe('TOO_MANY_REQUESTS');
    expect(refused.data?.httpStatus).toBe(429);
    expect(refused.data?.retryAfterSeconds).toBe(1);
    expect(refused.message).toBe('You are writing faster than this service allows; try again in 1 s');

    // The header, as any HTTP client (or proxy) reads it.
    const raw = await fetch(`${http.url}/trpc/chat.renameSession`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ json: { sessionId: session.id, title: 'Renamed over the limit' } }),
    });
    expect(raw.status).toBe(429);
    expect(raw.headers.get('retry-after')).toBe('1');
    expect(((await raw.json()) as { error: { json: { data: { retryAfterSeconds: number } } } }).error.json.data.retryAfterSeconds).toBe(1);

    // Nothing of the refused writes was stored.
    expect(await storedMessages(session.id)).toBe(20);
    expect((await client.chat.getSession.query({ sessionId: session.id })).title).not.toBe('Renamed over the limit');

    // After the wait it was told, and no later, the person writes again.
    await new Promise((resolve) => setTimeout(resolve, (refused.data?.retryAfterSeconds ?? 0) * 1000));
    await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'after the wait' });
    expect(await storedMessages(session.id)).toBe(21);

    // A colleague in the same organization writes at full speed; the person's reads go on.
    const grace = http.clientFor(await limited.idp.mintToken({ claims: { sub: randomUUID(), tenantId: ada.tenantId } }));
    const graceSession = await grace.chat.getActiveSession.query();
    for (let i = 0; i < 20; i += 1) await grace.chat.sendMessage.mutate({ sessionId: graceSession.id, content: `grace ${i}` });
    for (let i = 0; i < 30; i += 1) {
      await client.chat.listMessages.query({ sessionId: session.id, limit: 5 });
      await client.chat.listSessions.query();
    }

    const counted = (await limited.deps.metrics.limited.get()).values.filter((value) => value.labels.limit === 'writes_per_minute');
    expect(counted.map(({ labels, value }) => [labels.procedure, value]).sort()).toEqual([
      ['chat.renameSession', 1],
      ['chat.sendMessage', 1],
    ]);
  });

  it('takes nothing from the writes a minute of a write refused for having too many calls in progress', async () => {
    const caller = await limited.as(person());
    const session = await caller.chat.getActiveSession();
    // 15 at once: HEAVY_CALLS_PER_PERSON (10) lets 10 through and refuses 5.
    const first = await Promise.allSettled(
      Array.from({ length: 15 }, (_, index) => caller.chat.renameSession({ sessionId: session.id, title: `Title ${index}` })),
    );
    expect(first.filter((result) => result.status === 'fulfilled')).toHaveLength(10);
    expect(first.filter((result) => result.status === 'rejected')).toEqual(
      Array(5).fill({ status: 'rejected', reason: expect.objectContaining({ message: 'You have too many requests in progress; try again shortly' }) }),
    );
    // The bucket of 20 still holds 10, one at a time.
    for (let i = 0; i < 10; i += 1) await caller.chat.renameSession({ sessionId: session.id, title: `Later ${i}` });
    await expect(caller.chat.renameSession({ sessionId: session.id, title: 'One too many' })).rejects.toMatchObject({
      cause: { retryAfterSeconds: 1 },
    });
  });

  it('counts every write procedure, and a refused one changes nothing; bad input takes no write', async () => {
    // A limit of 3 a minute holds one write, and the next comes 20 s later.
    const strict = await startTestApp({ alongside: { database: limited.database, idp: limited.idp }, writesPerMinute: 3 });
    try {
      const ada = person();
      const setup = await limited.as(ada);
      const first = await setup.chat.getActiveSession();
      await setup.chat.sendMessage({ sessionId: first.id, content: 'hello' });
      const second = await setup.chat.createSession({ title: 'Second' });
      const caller = await strict.as(ada);

      // Refused by its input before the limit is asked: nothing taken.
      await expect(caller.chat.renameSession({ sessionId: first.id, title: '' })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
      // The one write the bucket holds.
      expect(await caller.chat.stopReply({ sessionId: first.id })).toBeNull();

      const writes = [
        () => caller.chat.createSession({ title: 'Third' }),
        () => caller.chat.setActiveSession({ sessionId: first.id }),
        () => caller.chat.renameSession({ sessionId: first.id, title: 'Renamed' }),
        () => caller.chat.deleteSession({ sessionId: first.id }),
        () => caller.chat.sendMessage({ sessionId: first.id, content: 'again' }),
        () => caller.chat.stopReply({ sessionId: first.id }),
      ];
      for (const write of writes) {
        const error = await write().then(
          () => undefined,
          (thrown: unknown) => thrown,
        );
        expect(error).toBeInstanceOf(TRPCError);
        expect(error).toMatchObject({ code: 'TOO_MANY_REQUESTS' });
        expect(((error as TRPCError).cause as WriteRateLimitedError).retryAfterSeconds).toBeGreaterThanOrEqual(19);
      }

      const owner = and(eq(chatSessions.userId, ada.sub), eq(chatSessions.organizationId, ada.tenantId));
      const sessions = await limited.db.select().from(chatSessions).where(owner);
      expect(sessions.map((session) => [session.id, session.title, session.isActive]).sort()).toEqual(
        [
          // Titled by its first message.
          [first.id, 'hello', false],
          [second.id, 'Second', true],
        ].sort(),
      );
      expect(await storedMessages(first.id)).toBe(1);
      // Reads are not limited.
      expect((await caller.chat.listSessions()).items).toHaveLength(2);
    } finally {
      await strict.close();
    }
  });

  it('0 turns the limit off', async () => {
    const unlimited = await startTestApp({ alongside: { database: limited.database, idp: limited.idp }, writesPerMinute: 0 });
    try {
      const caller = await unlimited.as(person());
      for (let i = 0; i < 40; i += 1) await caller.chat.createSession();
      expect(unlimited.deps.writes.people).toBe(0);
    } finally {
      await unlimited.close();
    }
  });
});

describe('the write limiter', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('refills at the rate, up to a third of a minute’s writes', () => {
    vi.useFakeTimers({ toFake: ['performance'] });
    const writes = createWriteLimit(60);
    const waits = Array.from({ length: 21 }, () => writes.take('ada'));
    expect(waits.slice(0, 20)).toEqual(Array(20).fill(0));
    expect(waits[20]).toBe(1);
    vi.advanceTimersByTime(1_000);
    expect(writes.take('ada')).toBe(0);
    expect(writes.take('ada')).toBe(1);
    // A long pause refills the bucket to its size, not beyond.
    vi.advanceTimersByTime(10 * 60_000);
    expect(Array.from({ length: 21 }, () => writes.take('ada')).filter((wait) => wait === 0)).toHaveLength(20);
    // One write a minute: a bucket of one, and a minute to wait.
    const slow = createWriteLimit(1);
    expect([slow.take('ada'), slow.take('ada')]).toEqual([0, 60]);
  });

  it('says to wait exactly as long as the next write takes to come', () => {
    vi.useFakeTimers({ toFake: ['performance'] });
    vi.advanceTimersByTime(1_000);
    for (const [perMinute, burst, wait] of [
      [60, 20, 1],
      [3, 1, 20],
    ] as const) {
      const writes = createWriteLimit(perMinute);
      for (let i = 0; i < burst; i += 1) expect(writes.take('ada')).toBe(0);
      expect(writes.take('ada')).toBe(wait);
      vi.advanceTimersByTime(wait * 1000 - 50);
      expect(writes.take('ada')).toBeGreaterThan(0);
      vi.advanceTimersByTime(50);
      expect(writes.take('ada')).toBe(0);
    }
  });

  it('forgets people once their bucket would be full again, and never holds more than its cap', () => {
    vi.useFakeTimers({ toFake: ['performance'] });
    // The fake clock starts at 0, which lru-cache reads as "no start time".
    vi.advanceTimersByTime(1_000);
    const writes = createWriteLimit(60);
    for (let i = 0; i < 10_000; i += 1) writes.take(`person ${i}`);
    expect(writes.people).toBe(10_000);
    // 20 s refill a bucket of 20 at one a second.
    vi.advanceTimersByTime(20_001);
    writes.take('someone new');
    expect(writes.people).toBe(1);

    for (let i = 0; i < MAX_PEOPLE + 5_000; i += 1) writes.take(`crowd ${i}`);
    expect(writes.people).toBe(MAX_PEOPLE);
  });
});
