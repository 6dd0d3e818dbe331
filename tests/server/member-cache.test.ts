import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { eq, sql } from 'drizzle-orm';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ZodError } from 'zod';
import { chatSessions, users } from '../../db/schema.js';
import { type Member, createMemberCache } from '../../server/member-cache.js';
import { deactivateMembership, whileInsertsFail } from '../support/database.js';
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

/** The statements that provision: one upsert into `users` each time. */
const provisionings = () => statements.filter((text) => text.startsWith('insert into "users"')).length;

function person(overrides: Record<string, unknown> = {}) {
  return { sub: randomUUID(), tenantId: randomUUID(), roles: ['Admin'], ...overrides };
}

describe('statements per request', () => {
  it('a first login provisions (four statements sent at once), then runs the procedure: the session read, then its insert and event', async () => {
    await (await app.as(person())).chat.getActiveSession();

    expect(statements).toHaveLength(8);
    expect(statements[0]).toMatch(/^insert into "organizations"/);
    expect(statements[1]).toMatch(/^select .* from "organizations"/);
    expect(statements[2]).toMatch(/^insert into "users"/);
    expect(statements[3]).toMatch(/^insert into "organization_members"/);
    expect(statements[4]).toMatch(/^select .* from "chat_sessions"/);
    // In one transaction: the membership row locked (it numbers the member's events), the session, its event.
    expect(statements[5]).toMatch(/^select .* from "organization_members" .* for no key update$/);
    expect(statements[6]).toMatch(/^insert into "chat_sessions"/);
    expect(statements[7]).toMatch(/^with "inserted" as \(insert into "chat_events"/);
  });

  it('provisioning commits in a transaction of its own, and the procedure runs after it on the pool', async () => {
    const claims = person();
    await (await app.as(claims)).chat.getActiveSession();
    // `xmin` is the transaction that wrote a row: the user and their first session differ.
    const [user] = await app.db.select({ xmin: sql<string>`xmin::text` }).from(users).where(eq(users.id, claims.sub));
    const [session] = await app.db
      .select({ xmin: sql<string>`xmin::text` })
      .from(chatSessions)
      .where(eq(chatSessions.userId, claims.sub));
    expect(user?.xmin).toBeDefined();
    expect(session?.xmin).toBeDefined();
    expect(session?.xmin).not.toBe(user?.xmin);
  });

  it('a warm getActiveSession is one statement, also with a new token carrying the same claims', async () => {
    const claims = person();
    const first = await (await app.as(claims)).chat.getActiveSession();

    statements.length = 0;
    // Each `app.as` signs a new token: another string with the same identity claims.
    expect(await (await app.as(claims)).chat.getActiveSession()).toEqual(first);
    expect(await (await app.as(claims)).chat.getActiveSession()).toEqual(first);

    expect(statements).toHaveLength(2);
    expect(statements.every((text) => /^select .* from "chat_sessions"/.test(text))).toBe(true);
  });

  it('a warm `me` needs no statement at all', async () => {
    const claims = person();
    await (await app.as(claims)).me();
    statements.length = 0;
    expect((await (await app.as(claims)).me()).user.id).toBe(claims.sub);
    expect(statements).toEqual([]);
  });

  it('provisions once for a batch of first calls sharing a context', async () => {
    const caller = await app.as(person());
    await Promise.all([caller.chat.getActiveSession(), caller.chat.listSessions(), caller.me()]);
    expect(provisionings()).toBe(1);
  });

  it('provisions once for a batch of first calls over HTTP', async () => {
    const http = await startHttpServer(app);
    try {
      const client = http.clientFor(await app.idp.mintToken({ claims: person() }));
      // The calls of a batch run concurrently once the caller is provisioned.
      const [session, , me] = await Promise.all([
        client.chat.getActiveSession.query(),
        client.chat.listSessions.query(),
        client.me.query(),
      ]);
      expect(me.role).toBe('admin');
      expect(provisionings()).toBe(1);
      expect((await client.chat.listSessions.query()).items.map((item) => item.id)).toEqual([session.id]);
    } finally {
      await http.close();
    }
  });

  it('provisions once for concurrent first requests of one person, each with a context of its own', async () => {
    const claims = person();
    const sessions = await Promise.all(
      Array.from({ length: 8 }, async () => (await app.as(claims)).chat.getActiveSession()),
    );
    expect(new Set(sessions.map((session) => session.id)).size).toBe(1);
    expect(provisionings()).toBe(1);
  });
});

describe('what provisions again', () => {
  it('a demotion takes effect on the next request: it is never answered from the cache', async () => {
    // Admins only, whatever the permissions.
    const admin = person({ roles: ['Admin'], permissions: [] });
    expect((await (await app.as(admin)).org.members()).items).toHaveLength(1);

    const demoted = { ...admin, roles: ['ReadOnly'] };
    await expectTRPCError((await app.as(demoted)).org.members(), 'FORBIDDEN');
    expect((await (await app.as(demoted)).me()).role).toBe('viewer');
    // And back: the role follows each token, whichever was seen last.
    expect((await (await app.as(admin)).me()).role).toBe('admin');
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
    await (await app.as(claims)).me();
    statements.length = 0;
    const me = await (await app.as({ ...claims, ...change })).me();
    expect(provisionings()).toBe(1);
    if ('email' in change) expect(me.user.email).toBe(change.email);
    if ('tenantId' in change) expect(me.organization.id).toBe(change.tenantId);
  });

  it('a first request that fails after the input check still provisions the caller, once', async () => {
    const claims = person();
    const caller = await app.as(claims);
    await expectTRPCError(caller.chat.sendMessage({ sessionId: randomUUID(), content: 'hello' }), 'NOT_FOUND');
    expect(await app.db.select({ id: users.id }).from(users).where(eq(users.id, claims.sub))).toEqual([{ id: claims.sub }]);

    statements.length = 0;
    await caller.chat.getActiveSession();
    expect(provisionings()).toBe(0);
  });

  it('a call without a token is refused before its input is checked', async () => {
    const error = await expectTRPCError(
      (await app.callerFor(undefined)).chat.sendMessage({ sessionId: 'not-a-uuid', content: '' }),
      'UNAUTHORIZED',
    );
    expect(error.cause).not.toBeInstanceOf(ZodError);
  });

  it('a first request with bad input provisions no one', async () => {
    const claims = person();
    await expectTRPCError((await app.as(claims)).chat.sendMessage({ sessionId: 'not-a-uuid', content: '' }), 'BAD_REQUEST');
    expect(statements).toEqual([]);
    expect(await app.db.select().from(users).where(eq(users.id, claims.sub))).toEqual([]);
  });

  it('a failed provisioning is shared by the calls waiting on it and remembered by none', async () => {
    const claims = person();
    const caller = await app.as(claims);
    await whileInsertsFail(
      app.db,
      { table: 'users', column: 'id', value: claims.sub, message: 'refused by the test' },
      async () => {
        const results = await Promise.allSettled([caller.me(), caller.chat.getActiveSession(), caller.chat.listSessions()]);
        expect(results.map((result) => result.status)).toEqual(['rejected', 'rejected', 'rejected']);
      },
    );
    expect(provisionings()).toBe(1);
    expect((await caller.me()).user.id).toBe(claims.sub);
    expect(provisionings()).toBe(2);
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

  const provisioned = () => seen.filter((text) => text.startsWith('insert into "users"')).length;

  it('provisions again once the entry is older than its lifetime, writing last_login at most once a minute', async () => {
    const claims = person();
    await (await short.as(claims)).me();
    const [before] = await short.db.select({ lastLogin: users.lastLogin }).from(users).where(eq(users.id, claims.sub));
    seen.length = 0;

    await (await short.as(claims)).me();
    expect(provisioned()).toBe(0);
    await sleep(TTL_MS + 50);
    await (await short.as(claims)).me();
    expect(provisioned()).toBe(1);

    const [after] = await short.db.select({ lastLogin: users.lastLogin }).from(users).where(eq(users.id, claims.sub));
    expect(after?.lastLogin).toEqual(before?.lastLogin);
  });

  it('sees a membership deactivated in the database once the entry expires', async () => {
    const claims = person();
    await (await short.as(claims)).me();
    await deactivateMembership(short.db, { userId: claims.sub, organizationId: claims.tenantId });

    // Until then the rows provisioned a moment ago answer: the staleness the cache allows.
    expect((await (await short.as(claims)).me()).user.id).toBe(claims.sub);
    await sleep(TTL_MS + 50);
    await expectTRPCError((await short.as(claims)).me(), 'FORBIDDEN');
  });

  it('holds at most its maximum number of people, dropping the least recently used', async () => {
    const people = Array.from({ length: 5 }, () => person());
    for (const claims of people) await (await short.as(claims)).me();
    seen.length = 0;

    // The last three are remembered; the first is not.
    await (await short.as(people[4]!)).me();
    expect(provisioned()).toBe(0);
    await (await short.as(people[0]!)).me();
    expect(provisioned()).toBe(1);
  });
});

describe('createMemberCache, with provisionings the test settles by hand', () => {
  /** A provisioning that resolves or fails when the test says, and the rows it resolves with. */
  function pendingProvisioning(label: string) {
    let settle!: { resolve: (member: Member) => void; reject: (error: Error) => void };
    const promise = new Promise<Member>((resolve, reject) => (settle = { resolve, reject }));
    const member = { user: { id: label, profileData: {} }, organization: { id: 'org' }, membership: { role: label } } as unknown as Member;
    return { provision: () => promise, member, ...settle };
  }
  const claims = { userId: 'u', tenantId: 't', email: 'a@example.com', roles: ['Admin'] };

  it('shares one provisioning among concurrent calls with the same claims', async () => {
    const members = createMemberCache();
    const first = pendingProvisioning('first');
    let provisions = 0;
    const provision = () => {
      provisions += 1;
      return first.provision();
    };
    const calls = [members.getOrProvision(claims, provision), members.getOrProvision({ ...claims }, provision)];
    first.resolve(first.member);
    const [a, b] = await Promise.all(calls);
    expect(provisions).toBe(1);
    expect(a).toBe(b);
    expect(await members.getOrProvision({ ...claims }, provision)).toBe(a);
    expect(provisions).toBe(1);
  });

  it('does not share a provisioning under way with a call whose claims differ (a demotion)', async () => {
    const members = createMemberCache();
    const admin = pendingProvisioning('admin');
    const viewer = pendingProvisioning('viewer');
    const asAdmin = members.getOrProvision(claims, admin.provision);
    const asViewer = members.getOrProvision({ ...claims, roles: ['ReadOnly'] }, viewer.provision);
    viewer.resolve(viewer.member);
    admin.resolve(admin.member);
    expect((await asAdmin).membership.role).toBe('admin');
    expect((await asViewer).membership.role).toBe('viewer');
  });

  it('gives a failed provisioning’s error to every call waiting on it, and remembers nothing', async () => {
    const members = createMemberCache();
    const failing = pendingProvisioning('failing');
    const calls = [members.getOrProvision(claims, failing.provision), members.getOrProvision(claims, failing.provision)];
    failing.reject(new Error('database down'));
    for (const result of await Promise.allSettled(calls)) {
      expect(result).toMatchObject({ status: 'rejected', reason: { message: 'database down' } });
    }
    const retry = pendingProvisioning('retry');
    retry.resolve(retry.member);
    expect((await members.getOrProvision(claims, retry.provision)).membership.role).toBe('retry');
    expect(members.size).toBe(1);
  });

  it('is bounded in bytes as well as entries: people with large rows push others out', async () => {
    const members = createMemberCache({ maxEntries: 1_000, ttlMs: 60_000, maxBytes: 20_000 });
    for (let i = 0; i < 10; i++) {
      const large = pendingProvisioning('large');
      (large.member.user as { name: string }).name = 'n'.repeat(3_000);
      large.resolve(large.member);
      await members.getOrProvision({ ...claims, userId: `u${i}` }, large.provision);
    }
    // About 6 KB each as remembered: three fit in 20 KB, whatever the entry count allows.
    expect(members.size).toBeLessThanOrEqual(3);
    expect(members.size).toBeGreaterThan(0);
  });

  it('forgets the memberships that changed: one person in one organization, all of a person’s, all of an organization’s, everyone', async () => {
    const members = createMemberCache();
    const remember = async (userId: string, tenantId: string) => {
      const rows = pendingProvisioning(`${userId}@${tenantId}`);
      rows.resolve(rows.member);
      await members.getOrProvision({ ...claims, userId, tenantId }, rows.provision);
    };
    const remembered = async (userId: string, tenantId: string) => {
      let provisioned = false;
      const again = pendingProvisioning('again');
      again.resolve(again.member);
      await members.getOrProvision({ ...claims, userId, tenantId }, () => ((provisioned = true), again.provision()));
      return !provisioned;
    };
    const everyone = [['ada', 'a'], ['ada', 'b'], ['grace', 'a'], ['grace', 'b']] as const;
    for (const [userId, tenantId] of everyone) await remember(userId, tenantId);

    members.forget({ userId: 'ada', organizationId: 'a' });
    expect(await remembered('ada', 'b')).toBe(true);
    expect(await remembered('grace', 'a')).toBe(true);
    expect(await remembered('ada', 'a')).toBe(false);

    members.forget({ userId: 'grace' });
    expect([await remembered('grace', 'a'), await remembered('grace', 'b'), await remembered('ada', 'b')]).toEqual([false, false, true]);
    members.forget({ organizationId: 'b' });
    expect([await remembered('ada', 'b'), await remembered('grace', 'b'), await remembered('ada', 'a')]).toEqual([false, false, true]);
    members.forget({});
    expect(members.size).toBe(0);
  });

  it('neither remembers nor shares a provisioning that began before the memberships changed', async () => {
    const members = createMemberCache();
    const stale = pendingProvisioning('stale');
    const before = members.getOrProvision(claims, stale.provision);
    members.forget({ userId: claims.userId });
    // A call after the change does not join the provisioning under way: it reads afresh.
    const fresh = pendingProvisioning('fresh');
    const after = members.getOrProvision(claims, fresh.provision);
    stale.resolve(stale.member);
    fresh.resolve(fresh.member);
    expect((await before).membership.role).toBe('stale');
    expect((await after).membership.role).toBe('fresh');
    const next = pendingProvisioning('next');
    next.resolve(next.member);
    expect((await members.getOrProvision(claims, next.provision)).membership.role).toBe('fresh');
  });

  it('hands out frozen rows, also when it remembers nothing', async () => {
    const members = createMemberCache({ maxEntries: 0, ttlMs: 0 });
    const once = pendingProvisioning('once');
    once.resolve(once.member);
    const member = await members.getOrProvision(claims, once.provision);
    expect(Object.isFrozen(member) && Object.isFrozen(member.user) && Object.isFrozen(member.membership)).toBe(true);
    expect(members.size).toBe(0);
  });
});
