import { randomUUID } from 'node:crypto';
import { and, count, eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sessionColumns } from '../../db/chat.js';
import { chatMessages, chatSessions } from '../../db/schema.js';
import { deactivateMembership, whileInsertsFail } from '../support/database.js';
import { expectTRPCError } from '../support/errors.js';
import { allPages } from '../support/paging.js';
import { type TestApp, startTestApp } from '../support/test-app.js';

let app: TestApp;
beforeAll(async () => {
  app = await startTestApp();
});
afterAll(() => app.close());

type Person = { sub: string; tenantId: string };

function newPerson(tenantId: string = randomUUID()): Person {
  return { sub: randomUUID(), tenantId };
}


/** The stored session row and its message count, to show that a refused call changed nothing. */
async function storedState(sessionId: string) {
  const [session] = await app.db.select().from(chatSessions).where(eq(chatSessions.id, sessionId));
  const [messages] = await app.db.select({ n: count() }).from(chatMessages).where(eq(chatMessages.sessionId, sessionId));
  return { session, messages: messages?.n };
}

async function activeSessionIds(person: Person) {
  const rows = await app.db
    .select({ id: chatSessions.id })
    .from(chatSessions)
    .where(
      and(
        eq(chatSessions.userId, person.sub),
        eq(chatSessions.organizationId, person.tenantId),
        eq(chatSessions.isActive, true),
      ),
    );
  return rows.map((row) => row.id);
}

/** Gives the session a chosen `updated_at`, to build ties and orders without sleeping. */
async function setUpdatedAt(sessionId: string, updatedAt: Date) {
  await app.db.update(chatSessions).set({ updatedAt }).where(eq(chatSessions.id, sessionId));
}

/** A `Session` as the API returns it: exactly the fields of `sessionColumns`, each of its column's type. */
const sessionShape = Object.fromEntries(
  Object.entries(sessionColumns).map(([field, column]) => [
    field,
    expect.any(column.dataType === 'date' ? Date : column.dataType === 'boolean' ? Boolean : String),
  ]),
);

describe('every chat procedure', () => {
  type Caller = Awaited<ReturnType<TestApp['as']>>;
  const calls: [string, (caller: Caller, sessionId: string) => Promise<unknown>][] = [
    ['getActiveSession', (c) => c.chat.getActiveSession()],
    ['createSession', (c) => c.chat.createSession({ title: 'x' })],
    ['listSessions', (c) => c.chat.listSessions()],
    ['getSession', (c, sessionId) => c.chat.getSession({ sessionId })],
    ['setActiveSession', (c, sessionId) => c.chat.setActiveSession({ sessionId })],
    ['renameSession', (c, sessionId) => c.chat.renameSession({ sessionId, title: 'x' })],
    ['deleteSession', (c, sessionId) => c.chat.deleteSession({ sessionId })],
    ['sendMessage', (c, sessionId) => c.chat.sendMessage({ sessionId, content: 'x' })],
    ['listMessages', (c, sessionId) => c.chat.listMessages({ sessionId })],
  ];

  it.each(calls)('%s answers UNAUTHORIZED without a valid token', async (_, call) => {
    await expectTRPCError(call(await app.callerFor(undefined), randomUUID()), 'UNAUTHORIZED');
    await expectTRPCError(call(await app.callerFor('not.a.token'), randomUUID()), 'UNAUTHORIZED');
  });

  it.each(calls)('%s answers FORBIDDEN to a deactivated member, and changes nothing', async (_, call) => {
    const person = newPerson();
    const caller = await app.as(person);
    const session = await caller.chat.getActiveSession();
    await caller.chat.sendMessage({ sessionId: session.id, content: 'before' });
    const before = await storedState(session.id);
    await deactivateMembership(app.db, { userId: person.sub, organizationId: person.tenantId });
    await expectTRPCError(call(await app.as(person, { provisionEveryRequest: true }), session.id), 'FORBIDDEN');
    expect(await storedState(session.id)).toEqual(before);
    expect(await activeSessionIds(person)).toEqual([session.id]);
  });
});

describe('chat.getActiveSession', () => {
  it('creates a `New Chat` session on first call, logs it, and returns the same one afterwards', async () => {
    const person = newPerson();
    const caller = await app.as(person);
    const first = await caller.chat.getActiveSession();
    expect(first).toEqual({ ...sessionShape, title: 'New Chat', isActive: true });

    expect(await caller.chat.getActiveSession()).toEqual(first);
    const created = app.logs.filter((line) => line.msg === 'Created new active session' && line.userId === person.sub);
    expect(created).toEqual([
      expect.objectContaining({ level: 30, sessionId: first.id, organizationId: person.tenantId }),
    ]);
  });

  it('gives 30 concurrent first calls of a new user one session', async () => {
    // Three users, since one race may happen to run in order.
    for (let round = 0; round < 3; round++) {
      const person = newPerson();
      // Signed in (provisioned) first, so the 30 calls reach the session statement together.
      const callers = await Promise.all(Array.from({ length: 30 }, () => app.as(person)));
      const sessions = await Promise.all(callers.map((caller) => caller.chat.getActiveSession()));
      expect(new Set(sessions.map((session) => session.id)).size).toBe(1);
      const [stored] = await app.db.select({ n: count() }).from(chatSessions).where(eq(chatSessions.userId, person.sub));
      expect(stored?.n).toBe(1);
    }
  });

  it('keeps one active session per organization for a user of two tenants', async () => {
    const person = newPerson();
    const inA = await (await app.as(person)).chat.getActiveSession();
    const inB = await (await app.as({ ...person, tenantId: randomUUID() })).chat.getActiveSession();
    expect(inA.id).not.toBe(inB.id);
    expect(await (await app.as(person)).chat.getActiveSession()).toEqual(inA);
  });
});

describe('chat.createSession', () => {
  it('makes the new session the only active one', async () => {
    const person = newPerson();
    const caller = await app.as(person);
    const old = await caller.chat.getActiveSession();
    const created = await caller.chat.createSession({ title: '  Trip planning  ' });
    expect(created).toEqual({ ...sessionShape, title: 'Trip planning', isActive: true });
    expect(await activeSessionIds(person)).toEqual([created.id]);
    expect(await caller.chat.getSession({ sessionId: old.id })).toMatchObject({ isActive: false });
    expect(await caller.chat.getActiveSession()).toEqual(created);
    expect(app.logs).toContainEqual(expect.objectContaining({ msg: 'Created session', sessionId: created.id }));
  });

  it('titles a session `New Chat` when no title is given, with or without an input object', async () => {
    const caller = await app.as(newPerson());
    expect(await caller.chat.createSession()).toMatchObject({ title: 'New Chat' });
    expect(await caller.chat.createSession({})).toMatchObject({ title: 'New Chat' });
  });

  it('leaves one active session when many are created at once, also racing getActiveSession', async () => {
    const person = newPerson();
    const calls = Array.from({ length: 12 }, async (_, i) => {
      const caller = await app.as(person);
      return i % 3 === 0 ? caller.chat.getActiveSession() : caller.chat.createSession({ title: `Chat ${i}` });
    });
    await Promise.all(calls);
    expect(await activeSessionIds(person)).toHaveLength(1);
  });

  it('keeps the previous session active when the new one cannot be stored (one transaction)', async () => {
    const person = newPerson();
    const caller = await app.as(person);
    const old = await caller.chat.getActiveSession();
    const failure = { table: 'chat_sessions', column: 'title', value: 'Refused', message: 'insert refused' };
    await whileInsertsFail(app.db, failure, () =>
      expectTRPCError(caller.chat.createSession({ title: 'Refused' }), 'INTERNAL_SERVER_ERROR'),
    );
    expect(await activeSessionIds(person)).toEqual([old.id]);
  });

  it.each([
    ['empty', ''],
    ['only spaces', '   '],
    ['201 characters', 'x'.repeat(201)],
    ['a NUL character', 'a\u0000b'],
    ['a lone surrogate', 'a\ud800b'],
    ['not a string', 42],
  ])('answers BAD_REQUEST to a title that is %s, and creates nothing', async (_, title) => {
    const person = newPerson();
    const caller = await app.as(person);
    await expectTRPCError(caller.chat.createSession({ title } as { title: string }), 'BAD_REQUEST');
    expect(await activeSessionIds(person)).toEqual([]);
  });

  it('counts title length in characters after trimming: 200 emoji fit, with spaces around them', async () => {
    const caller = await app.as(newPerson());
    const title = '😀'.repeat(200);
    expect(await caller.chat.createSession({ title: `  ${title}  ` })).toMatchObject({ title });
  });
});

describe('chat.listSessions', () => {
  /** A person with `n` sessions whose activity is one second apart, newest last. */
  async function personWithSessions(n: number) {
    const person = newPerson();
    const caller = await app.as(person);
    const ids: string[] = [];
    const base = Date.now() - 60 * 60 * 1000;
    for (let i = 0; i < n; i++) {
      const session = await caller.chat.createSession({ title: `Chat ${i}` });
      await setUpdatedAt(session.id, new Date(base + i * 1000));
      ids.push(session.id);
    }
    return { person, caller, newestFirst: ids.reverse() };
  }

  async function listAll(caller: Awaited<ReturnType<TestApp['as']>>, limit: number) {
    const pages = await allPages((cursor) => caller.chat.listSessions({ limit, cursor }));
    return pages.flat().map((session) => session.id);
  }

  it('lists the caller’s sessions by most recent activity, 20 by default', async () => {
    const { caller, newestFirst } = await personWithSessions(3);
    const page = await caller.chat.listSessions();
    expect(page.items.map((session) => session.id)).toEqual(newestFirst);
    expect(page.items[0]).toEqual({ ...sessionShape, isActive: true });
    expect(page.nextCursor).toBeNull();
  });

  it('pages across boundaries and ends with a null cursor', async () => {
    const { caller, newestFirst } = await personWithSessions(7);
    const first = await caller.chat.listSessions({ limit: 3 });
    expect(first.items.map((s) => s.id)).toEqual(newestFirst.slice(0, 3));
    const second = await caller.chat.listSessions({ limit: 3, cursor: first.nextCursor });
    expect(second.items.map((s) => s.id)).toEqual(newestFirst.slice(3, 6));
    const third = await caller.chat.listSessions({ limit: 3, cursor: second.nextCursor });
    expect(third.items.map((s) => s.id)).toEqual(newestFirst.slice(6));
    expect(third.nextCursor).toBeNull();
    expect(await listAll(caller, 7)).toEqual(newestFirst);
  });

  it('breaks ties on identical activity by id, without duplicates or gaps', async () => {
    const { caller, newestFirst } = await personWithSessions(6);
    const sameInstant = new Date(Date.now() - 1000);
    for (const id of newestFirst) await setUpdatedAt(id, sameInstant);
    const byIdDescending = [...newestFirst].sort().reverse();
    expect(await listAll(caller, 1)).toEqual(byIdDescending);
    expect(await listAll(caller, 4)).toEqual(byIdDescending);
  });

  it('is stable when sessions are created between page fetches', async () => {
    const { caller, newestFirst } = await personWithSessions(6);
    const first = await caller.chat.listSessions({ limit: 2 });
    const newer = [await caller.chat.createSession(), await caller.chat.createSession()];
    const second = await caller.chat.listSessions({ limit: 2, cursor: first.nextCursor });
    newer.push(await caller.chat.createSession());
    const third = await caller.chat.listSessions({ limit: 10, cursor: second.nextCursor });
    // The walk that started before them sees each older session once, none skipped.
    expect([...first.items, ...second.items, ...third.items].map((s) => s.id)).toEqual(newestFirst);
    expect(third.nextCursor).toBeNull();
    // A new walk starts with them.
    const fresh = await caller.chat.listSessions({ limit: 3 });
    expect(fresh.items.map((s) => s.id)).toEqual(newer.map((s) => s.id).reverse());
  });

  it('moves a session to the top when a message is sent to it', async () => {
    const { caller, newestFirst } = await personWithSessions(3);
    const oldest = newestFirst.at(-1)!;
    await caller.chat.sendMessage({ sessionId: oldest, content: 'Back to this one' });
    expect((await caller.chat.listSessions()).items[0]?.id).toBe(oldest);
  });

  it('shows no session of another user of the organization or of another tenant', async () => {
    const person = newPerson();
    await (await app.as(person)).chat.getActiveSession();
    const colleague = newPerson(person.tenantId);
    const mine = await (await app.as(colleague)).chat.getActiveSession();
    await (await app.as({ ...colleague, tenantId: randomUUID() })).chat.getActiveSession();
    const listed = await (await app.as(colleague)).chat.listSessions();
    expect(listed.items.map((s) => s.id)).toEqual([mine.id]);
  });

  it('answers BAD_REQUEST to a cursor the server did not issue for this listing', async () => {
    const { person, caller } = await personWithSessions(3);
    const { nextCursor } = await caller.chat.listSessions({ limit: 1 });
    expect(nextCursor).toBeTypeOf('string');
    const [payload, mac] = nextCursor!.split('.');
    const forged = Buffer.from(JSON.stringify({ updatedAt: new Date().toISOString(), id: randomUUID() })).toString(
      'base64url',
    );
    const colleague = await app.as(newPerson(person.tenantId));
    await colleague.chat.createSession();
    const session = await caller.chat.getActiveSession();
    await caller.chat.sendMessage({ sessionId: session.id, content: 'hi' });
    await caller.chat.sendMessage({ sessionId: session.id, content: 'again' });
    const messagesCursor = (await caller.chat.listMessages({ sessionId: session.id, limit: 1 })).nextCursor!;

    for (const cursor of ['garbage', payload!, `${forged}.${mac}`, `${payload}.${mac}x`, `${nextCursor}.x`, messagesCursor]) {
      await expectTRPCError(caller.chat.listSessions({ cursor }), 'BAD_REQUEST');
    }
    // Someone else's cursor, even a genuine one, is not a cursor of this listing.
    await expectTRPCError(colleague.chat.listSessions({ cursor: nextCursor }), 'BAD_REQUEST');
  });

  it.each([{ limit: 0 }, { limit: 101 }, { limit: 1.5 }, { cursor: 'x'.repeat(513) }])(
    'answers BAD_REQUEST to %j',
    async (input) => {
      await expectTRPCError((await app.as(newPerson())).chat.listSessions(input), 'BAD_REQUEST');
    },
  );
});

describe('chat.getSession', () => {
  it('returns the caller’s session', async () => {
    const caller = await app.as(newPerson());
    const session = await caller.chat.createSession({ title: 'Mine' });
    expect(await caller.chat.getSession({ sessionId: session.id })).toEqual(session);
  });

  it('answers NOT_FOUND for a session that does not exist, and BAD_REQUEST for an id that is not a UUID', async () => {
    const caller = await app.as(newPerson());
    const error = await expectTRPCError(caller.chat.getSession({ sessionId: randomUUID() }), 'NOT_FOUND');
    expect(error.message).toBe('Chat session not found');
    await expectTRPCError(caller.chat.getSession({ sessionId: 'not-a-uuid' }), 'BAD_REQUEST');
    await expectTRPCError(caller.chat.getSession({ sessionId: "' or 1=1 --" }), 'BAD_REQUEST');
  });
});

describe('chat.setActiveSession', () => {
  it('makes the chosen session the only active one', async () => {
    const person = newPerson();
    const caller = await app.as(person);
    const older = await caller.chat.createSession({ title: 'Older' });
    const newer = await caller.chat.createSession({ title: 'Newer' });
    expect(await caller.chat.setActiveSession({ sessionId: older.id })).toMatchObject({
      id: older.id,
      isActive: true,
      updatedAt: older.updatedAt,
    });
    expect(await activeSessionIds(person)).toEqual([older.id]);
    expect(await caller.chat.getSession({ sessionId: newer.id })).toMatchObject({ isActive: false });
    // Choosing the active one again changes nothing.
    expect(await caller.chat.setActiveSession({ sessionId: older.id })).toMatchObject({ id: older.id, isActive: true });
    expect(await activeSessionIds(person)).toEqual([older.id]);
  });

  it('leaves the caller’s active session alone when the chosen one is not found', async () => {
    const person = newPerson();
    const caller = await app.as(person);
    const active = await caller.chat.getActiveSession();
    await expectTRPCError(caller.chat.setActiveSession({ sessionId: randomUUID() }), 'NOT_FOUND');
    expect(await activeSessionIds(person)).toEqual([active.id]);
  });
});

describe('chat.renameSession', () => {
  it('renames, trims the title and counts it as activity', async () => {
    const caller = await app.as(newPerson());
    const session = await caller.chat.createSession();
    const renamed = await caller.chat.renameSession({ sessionId: session.id, title: '  Recipes ' });
    expect(renamed).toMatchObject({ id: session.id, title: 'Recipes' });
    expect(renamed.updatedAt.getTime()).toBeGreaterThanOrEqual(session.updatedAt.getTime());
    expect(await caller.chat.getSession({ sessionId: session.id })).toEqual(renamed);
  });

  it.each(['', ' \n\t ', 'y'.repeat(201)])('answers BAD_REQUEST to the title %j and keeps the old one', async (title) => {
    const caller = await app.as(newPerson());
    const session = await caller.chat.createSession({ title: 'Kept' });
    await expectTRPCError(caller.chat.renameSession({ sessionId: session.id, title }), 'BAD_REQUEST');
    expect(await caller.chat.getSession({ sessionId: session.id })).toMatchObject({ title: 'Kept' });
  });
});

describe('chat.deleteSession', () => {
  it('deletes the session with its messages; a new active one comes with the next getActiveSession', async () => {
    const person = newPerson();
    const caller = await app.as(person);
    const active = await caller.chat.getActiveSession();
    await caller.chat.sendMessage({ sessionId: active.id, content: 'one' });
    await caller.chat.sendMessage({ sessionId: active.id, content: 'two' });

    expect(await caller.chat.deleteSession({ sessionId: active.id })).toEqual({ sessionId: active.id });
    expect(await storedState(active.id)).toEqual({ session: undefined, messages: 0 });
    expect(await activeSessionIds(person)).toEqual([]);
    await expectTRPCError(caller.chat.getSession({ sessionId: active.id }), 'NOT_FOUND');
    await expectTRPCError(caller.chat.deleteSession({ sessionId: active.id }), 'NOT_FOUND');

    const next = await caller.chat.getActiveSession();
    expect(next).toMatchObject({ title: 'New Chat', isActive: true });
    expect(next.id).not.toBe(active.id);
  });

  it('leaves the active session alone when an inactive one is deleted', async () => {
    const person = newPerson();
    const caller = await app.as(person);
    const inactive = await caller.chat.createSession();
    const active = await caller.chat.createSession();
    await caller.chat.deleteSession({ sessionId: inactive.id });
    expect(await activeSessionIds(person)).toEqual([active.id]);
  });
});

describe('chat.sendMessage', () => {
  it('stores the message as the user’s and bumps the session’s activity', async () => {
    const caller = await app.as(newPerson());
    const session = await caller.chat.getActiveSession();
    const { message, reply } = await caller.chat.sendMessage({ sessionId: session.id, content: '  Hello there  ' });
    expect(message).toEqual({
      id: expect.any(String),
      sessionId: session.id,
      role: 'user',
      content: '  Hello there  ',
      status: 'complete',
      createdAt: expect.any(Date),
    });
    // This app runs without an assistant (ASSISTANT_REPLIES=off).
    expect(reply).toBeNull();
    const after = await caller.chat.getSession({ sessionId: session.id });
    expect(after.updatedAt).toEqual(message.createdAt);
    expect(after.updatedAt.getTime()).toBeGreaterThanOrEqual(session.updatedAt.getTime());
  });

  it('titles a `New Chat` session from the first message’s opening words only', async () => {
    const caller = await app.as(newPerson());
    const session = await caller.chat.getActiveSession();
    await caller.chat.sendMessage({
      sessionId: session.id,
      content: 'How do I   plan a\nthree-week trip through Japan in spring without spending a fortune?',
    });
    const titled = await caller.chat.getSession({ sessionId: session.id });
    expect(titled.title).toBe('How do I plan a three-week trip through Japan in…');
    await caller.chat.sendMessage({ sessionId: session.id, content: 'Something else entirely' });
    expect((await caller.chat.getSession({ sessionId: session.id })).title).toBe(titled.title);
  });

  it('keeps a title the user chose, and `New Chat` chosen after messages exist', async () => {
    const caller = await app.as(newPerson());
    const named = await caller.chat.createSession({ title: 'Named' });
    await caller.chat.sendMessage({ sessionId: named.id, content: 'First words' });
    expect((await caller.chat.getSession({ sessionId: named.id })).title).toBe('Named');

    await caller.chat.renameSession({ sessionId: named.id, title: 'New Chat' });
    await caller.chat.sendMessage({ sessionId: named.id, content: 'More words' });
    expect((await caller.chat.getSession({ sessionId: named.id })).title).toBe('New Chat');
  });

  it('cuts a title without splitting a long word or an emoji', async () => {
    const caller = await app.as(newPerson());
    const session = await caller.chat.createSession();
    await caller.chat.sendMessage({ sessionId: session.id, content: `${'😀'.repeat(80)} tail` });
    expect((await caller.chat.getSession({ sessionId: session.id })).title).toBe(`${'😀'.repeat(50)}…`);
  });

  it('accepts 32,000 characters', async () => {
    const caller = await app.as(newPerson());
    const session = await caller.chat.getActiveSession();
    const content = 'z'.repeat(32_000);
    expect((await caller.chat.sendMessage({ sessionId: session.id, content })).message).toMatchObject({ content });
  });

  it.each([
    ['empty', ''],
    ['only whitespace', ' \n '],
    ['32,001 characters', 'z'.repeat(32_001)],
    ['a NUL character', 'a\u0000'],
    ['a lone surrogate', '\udc00'],
  ])('answers BAD_REQUEST to content that is %s, and stores nothing', async (_, content) => {
    const caller = await app.as(newPerson());
    const session = await caller.chat.getActiveSession();
    const before = await storedState(session.id);
    const error = await expectTRPCError(caller.chat.sendMessage({ sessionId: session.id, content }), 'BAD_REQUEST');
    expect(error.message).not.toMatch(/insert|select|postgres/i);
    expect(await storedState(session.id)).toEqual(before);
  });

  it('changes nothing when the message cannot be stored (one transaction)', async () => {
    const caller = await app.as(newPerson());
    const session = await caller.chat.getActiveSession();
    const before = await storedState(session.id);
    const failure = { table: 'chat_messages', column: 'content', value: 'refused', message: 'insert refused' };
    await whileInsertsFail(app.db, failure, () =>
      expectTRPCError(caller.chat.sendMessage({ sessionId: session.id, content: 'refused' }), 'INTERNAL_SERVER_ERROR'),
    );
    expect(await storedState(session.id)).toEqual(before);
  });
});

describe('chat.listMessages', () => {
  async function sessionWithMessages(n: number) {
    const caller = await app.as(newPerson());
    const session = await caller.chat.createSession();
    const contents: string[] = [];
    for (let i = 1; i <= n; i++) {
      await caller.chat.sendMessage({ sessionId: session.id, content: `message ${i}` });
      contents.push(`message ${i}`);
    }
    return { caller, sessionId: session.id, contents };
  }

  it('stops a page at 1 MiB of message text, and pages on from there to every message', async () => {
    const { caller, sessionId } = await sessionWithMessages(0);
    // 12 messages of 32,000 emoji: 128,000 bytes of UTF-8 each, within the content limit.
    const big = (i: number) => `${String(i).padStart(2, '0')}${'😀'.repeat(31_999)}`;
    await app.db.insert(chatMessages).values(Array.from({ length: 12 }, (_, i) => ({ sessionId, role: 'user' as const, content: big(i) })));

    const first = await caller.chat.listMessages({ sessionId, limit: 100 });
    // Eight fit in 1,048,576 bytes (8 × 128,000 + 8 × 2); a ninth would not.
    expect(first.items.map((m) => m.content.slice(0, 2))).toEqual(['04', '05', '06', '07', '08', '09', '10', '11']);
    expect(first.nextCursor).toBeTypeOf('string');
    const pages = await allPages((cursor) => caller.chat.listMessages({ sessionId, limit: 100, cursor }));
    expect(pages.map((page) => page.length)).toEqual([8, 4]);
    expect(pages.reverse().flat().map((m) => m.content)).toEqual(Array.from({ length: 12 }, (_, i) => big(i)));
  });

  it('returns the newest messages oldest first, and pages back to the start', async () => {
    const { caller, sessionId, contents } = await sessionWithMessages(7);
    const latest = await caller.chat.listMessages({ sessionId, limit: 3 });
    expect(latest.items.map((m) => m.content)).toEqual(contents.slice(4));
    expect(latest.items[0]).toEqual({
      id: expect.any(String),
      sessionId,
      role: 'user',
      content: 'message 5',
      status: 'complete',
      createdAt: expect.any(Date),
    });
    const before = await caller.chat.listMessages({ sessionId, limit: 3, cursor: latest.nextCursor });
    expect(before.items.map((m) => m.content)).toEqual(contents.slice(1, 4));
    const start = await caller.chat.listMessages({ sessionId, limit: 3, cursor: before.nextCursor });
    expect(start.items.map((m) => m.content)).toEqual(contents.slice(0, 1));
    expect(start.nextCursor).toBeNull();

    const all = await caller.chat.listMessages({ sessionId });
    expect(all.items.map((m) => m.content)).toEqual(contents);
    expect(all.nextCursor).toBeNull();
  });

  it('is stable when messages arrive between page fetches', async () => {
    const { caller, sessionId, contents } = await sessionWithMessages(5);
    const latest = await caller.chat.listMessages({ sessionId, limit: 2 });
    await caller.chat.sendMessage({ sessionId, content: 'late 1' });
    const middle = await caller.chat.listMessages({ sessionId, limit: 2, cursor: latest.nextCursor });
    await caller.chat.sendMessage({ sessionId, content: 'late 2' });
    const start = await caller.chat.listMessages({ sessionId, limit: 2, cursor: middle.nextCursor });
    expect([...start.items, ...middle.items, ...latest.items].map((m) => m.content)).toEqual(contents);
    expect(start.nextCursor).toBeNull();
  });

  it('keeps messages stored in the same millisecond in the order they were stored', async () => {
    const { caller, sessionId } = await sessionWithMessages(0);
    const at = new Date();
    const roles = ['user', 'assistant', 'user', 'assistant', 'system', 'user'] as const;
    await app.db
      .insert(chatMessages)
      .values(roles.map((role, i) => ({ sessionId, role, content: `${i}`, createdAt: at })));
    // Newest page first; each page oldest first.
    const pages = await allPages((cursor) => caller.chat.listMessages({ sessionId, limit: 2, cursor }));
    expect(pages.reverse().flat().map((m) => m.content)).toEqual(['0', '1', '2', '3', '4', '5']);
  });

  it('answers an empty page for a session with no messages', async () => {
    const { caller, sessionId } = await sessionWithMessages(0);
    expect(await caller.chat.listMessages({ sessionId })).toEqual({ items: [], nextCursor: null });
  });

  it('answers BAD_REQUEST to a cursor of another session, and to bad limits', async () => {
    const { caller, sessionId } = await sessionWithMessages(3);
    const other = await caller.chat.createSession();
    const { nextCursor } = await caller.chat.listMessages({ sessionId, limit: 1 });
    await expectTRPCError(caller.chat.listMessages({ sessionId: other.id, cursor: nextCursor }), 'BAD_REQUEST');
    await expectTRPCError(caller.chat.listMessages({ sessionId, cursor: 'abc.def' }), 'BAD_REQUEST');
    await expectTRPCError(caller.chat.listMessages({ sessionId, limit: 0 }), 'BAD_REQUEST');
    await expectTRPCError(caller.chat.listMessages({ sessionId, limit: 101 }), 'BAD_REQUEST');
  });
});

describe('isolation: a session of another user, or of the same user in another tenant', () => {
  type Caller = Awaited<ReturnType<TestApp['as']>>;
  const attempts: [string, (caller: Caller, sessionId: string) => Promise<unknown>][] = [
    ['getSession', (c, sessionId) => c.chat.getSession({ sessionId })],
    ['setActiveSession', (c, sessionId) => c.chat.setActiveSession({ sessionId })],
    ['renameSession', (c, sessionId) => c.chat.renameSession({ sessionId, title: 'Taken over' })],
    ['deleteSession', (c, sessionId) => c.chat.deleteSession({ sessionId })],
    ['sendMessage', (c, sessionId) => c.chat.sendMessage({ sessionId, content: 'Injected' })],
    ['listMessages', (c, sessionId) => c.chat.listMessages({ sessionId })],
  ];

  async function ownersSession() {
    const owner = newPerson();
    const caller = await app.as(owner);
    const session = await caller.chat.getActiveSession();
    await caller.chat.sendMessage({ sessionId: session.id, content: 'Private' });
    return { owner, session };
  }

  describe.each([
    ['a colleague in the same organization', (owner: Person) => newPerson(owner.tenantId)],
    ['the same user signed in to another tenant', (owner: Person) => ({ sub: owner.sub, tenantId: randomUUID() })],
  ])('%s', (_, intruderOf) => {
    it.each(attempts)('%s answers NOT_FOUND, like a missing session, and changes nothing', async (_, attempt) => {
      const { owner, session } = await ownersSession();
      const intruder = await app.as(intruderOf(owner));
      // Their own active session, which a refused setActiveSession must not deactivate either.
      const intrudersOwn = await intruder.chat.getActiveSession();
      const before = await storedState(session.id);

      const refused = await expectTRPCError(attempt(intruder, session.id), 'NOT_FOUND');
      const missing = await expectTRPCError(attempt(intruder, randomUUID()), 'NOT_FOUND');
      expect(refused.message).toBe(missing.message);

      expect(await storedState(session.id)).toEqual(before);
      expect(await intruder.chat.getSession({ sessionId: intrudersOwn.id })).toMatchObject({ isActive: true });
      expect(await activeSessionIds(owner)).toEqual([session.id]);
    });
  });
});
