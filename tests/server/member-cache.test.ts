import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { users } from '../../db/schema.js';
import { createMemberCache } from '../../server/member-cache.js';
import { deactivateMembership } from '../support/database.js';
import { expectTRPCError } from '../support/errors.js';
import { type TestApp, startHttpServer, startTestApp } from '../support/test-app.js';

// Every statement the server sends, in order, as the database observer reports them.
const statements: string[] = [];
let app: TestApp;
beforeAll(async () => {
  app = await startTestApp({ onStatement: (text) => statements.push(text) });
});
afterAll(() => app.close());
beforeEach(() => {
  statements.length = 0;
});

const transactionControl = new Set(['begin', 'commit', 'rollback']);
const dataStatements = () => statements.filter((text) => !transactionControl.has(text));
const transactions = () => statements.filter((text) => text === 'begin').length;
/** The statements that provision: one upsert into `users` each time. */
const provisionings = () => statements.filter((text) => text.startsWith('insert into "users"')).length;

function person(overrides: Record<string, unknown> = {}) {
  return { sub: randomUUID(), tenantId: randomUUID(), roles: ['Admin'], ...overrides };
}

async function callerAs(claims: Record<string, unknown>) {
  return app.callerFor(await app.idp.mintToken({ claims }));
}

describe('statements per request', () => {
  it('a first login is one transaction: the organization, user, membership and session statements', async () => {
    await (await callerAs(person())).chat.getActiveSession();

    expect(statements[0]).toBe('begin');
    expect(statements.at(-1)).toBe('commit');
    expect(transactions()).toBe(1);
    const data = dataStatements();
    expect(data).toHaveLength(4);
    expect(data[0]).toMatch(/from "organizations"/);
    expect(data[1]).toMatch(/^insert into "users"/);
    expect(data[2]).toMatch(/^insert into "organization_members"/);
    expect(data[3]).toMatch(/insert into "chat_sessions"/);
  });

  it('a warm getActiveSession is one statement, also with a new token carrying the same claims', async () => {
    const claims = person();
    const first = await (await callerAs(claims)).chat.getActiveSession();

    statements.length = 0;
    expect(await (await callerAs(claims)).chat.getActiveSession()).toEqual(first);
    // A token minted a second later is another string with the same identity claims.
    await sleep(1_000);
    expect(await (await callerAs(claims)).chat.getActiveSession()).toEqual(first);

    expect(statements).toHaveLength(2);
    expect(statements.every((text) => /^select .* from "chat_sessions"/.test(text))).toBe(true);
  });

  it('a warm `me` needs no statement at all', async () => {
    const claims = person();
    await (await callerAs(claims)).me();
    statements.length = 0;
    expect((await (await callerAs(claims)).me()).user.id).toBe(claims.sub);
    expect(statements).toEqual([]);
  });

  it('provisions once for a batch of first calls sharing a context', async () => {
    const caller = await callerAs(person());
    await Promise.all([caller.chat.getActiveSession(), caller.chat.listSessions(), caller.me()]);
    expect(provisionings()).toBe(1);
    expect(transactions()).toBe(1);
  });

  it('provisions once for a batch of first calls over HTTP', async () => {
    const http = await startHttpServer(app);
    try {
      const client = http.clientFor(await app.idp.mintToken({ claims: person() }));
      const [session, list, me] = await Promise.all([
        client.chat.getActiveSession.query(),
        client.chat.listSessions.query(),
        client.me.query(),
      ]);
      expect(list.items.map((item) => item.id)).toContain(session.id);
      expect(me.role).toBe('admin');
      expect(provisionings()).toBe(1);
    } finally {
      await http.close();
    }
  });

  it('provisions once for concurrent first requests of one person, each with a context of its own', async () => {
    const claims = person();
    const sessions = await Promise.all(
      Array.from({ length: 8 }, async () => (await callerAs(claims)).chat.getActiveSession()),
    );
    expect(new Set(sessions.map((session) => session.id)).size).toBe(1);
    expect(provisionings()).toBe(1);
  });
});

describe('what provisions again', () => {
  it('a demotion takes effect on the next request: it is never answered from the cache', async () => {
    const admin = person({ roles: ['Admin'] });
    expect((await (await callerAs(admin)).org.members()).items).toHaveLength(1);

    const demoted = { ...admin, roles: ['ReadOnly'] };
    await expectTRPCError((await callerAs(demoted)).org.members(), 'FORBIDDEN');
    expect((await (await callerAs(demoted)).me()).role).toBe('viewer');
    // And back: the role follows each token, whichever was seen last.
    expect((await (await callerAs(admin)).me()).role).toBe('admin');
  });

  it.each([
    ['email changes', { email: 'new.address@example.com' }],
    ['name changes', { name: 'Another Name' }],
    ['picture changes', { profilePictureUrl: 'https://cdn.example.com/new.png' }],
    ['verified flag changes', { email_verified: false }],
    ['name is left out', { name: undefined }],
    ['tenant changes', { tenantId: randomUUID() }],
  ])("provisions again at once when the token's %s", async (_, change) => {
    const claims = person();
    await (await callerAs(claims)).me();
    statements.length = 0;
    const me = await (await callerAs({ ...claims, ...change })).me();
    expect(provisionings()).toBe(1);
    if ('email' in change) expect(me.user.email).toBe(change.email);
    if ('tenantId' in change) expect(me.organization.id).toBe(change.tenantId);
  });

  it('a failed first request provisions nothing and remembers nothing', async () => {
    const claims = person();
    const caller = await callerAs(claims);
    await expectTRPCError(caller.chat.sendMessage({ sessionId: randomUUID(), content: 'hello' }), 'NOT_FOUND');
    expect(statements.at(-1)).toBe('rollback');
    expect(await app.db.select().from(users).where(eq(users.id, claims.sub))).toEqual([]);

    statements.length = 0;
    await caller.chat.getActiveSession();
    expect(provisionings()).toBe(1);
  });
});

describe('a short-lived member cache', () => {
  const TTL_MS = 300;
  let short: TestApp;
  const seen: string[] = [];
  beforeAll(async () => {
    short = await startTestApp({
      onStatement: (text) => seen.push(text),
      members: createMemberCache({ maxEntries: 3, ttlMs: TTL_MS }),
    });
  });
  afterAll(() => short.close());

  const callerIn = async (claims: Record<string, unknown>) => short.callerFor(await short.idp.mintToken({ claims }));
  const provisioned = () => seen.filter((text) => text.startsWith('insert into "users"')).length;

  it('provisions again once the entry is older than its lifetime, writing last_login at most once a minute', async () => {
    const claims = person();
    await (await callerIn(claims)).me();
    const [before] = await short.db.select({ lastLogin: users.lastLogin }).from(users).where(eq(users.id, claims.sub));
    seen.length = 0;

    await (await callerIn(claims)).me();
    expect(provisioned()).toBe(0);
    await sleep(TTL_MS + 50);
    await (await callerIn(claims)).me();
    expect(provisioned()).toBe(1);

    const [after] = await short.db.select({ lastLogin: users.lastLogin }).from(users).where(eq(users.id, claims.sub));
    expect(after?.lastLogin).toEqual(before?.lastLogin);
  });

  it('sees a membership deactivated in the database once the entry expires', async () => {
    const claims = person();
    await (await callerIn(claims)).me();
    await deactivateMembership(short.db, { userId: claims.sub, organizationId: claims.tenantId });

    // Until then the rows provisioned a moment ago answer: the staleness the cache allows.
    expect((await (await callerIn(claims)).me()).user.id).toBe(claims.sub);
    await sleep(TTL_MS + 50);
    await expectTRPCError((await callerIn(claims)).me(), 'FORBIDDEN');
  });

  it('holds at most its maximum number of people, dropping the least recently used', async () => {
    const people = Array.from({ length: 5 }, () => person());
    for (const claims of people) await (await callerIn(claims)).me();
    seen.length = 0;

    // The last three are remembered; the first is not.
    await (await callerIn(people[4]!)).me();
    expect(provisioned()).toBe(0);
    await (await callerIn(people[0]!)).me();
    expect(provisioned()).toBe(1);
  });
});
