import { randomUUID } from 'node:crypto';
import { and, asc, eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { organizationMembers } from '../../db/schema.js';
import { deactivateMembership } from '../support/database.js';
import { expectTRPCError } from '../support/errors.js';
import { allPages } from '../support/paging.js';
import { type TestApp, startTestApp } from '../support/test-app.js';

let app: TestApp;
beforeAll(async () => {
  app = await startTestApp();
});
afterAll(() => app.close());

function person(tenantId: string, overrides: Record<string, unknown> = {}) {
  return { sub: randomUUID(), tenantId, ...overrides };
}


describe('me', () => {
  it('returns the provisioned user, organization and role', async () => {
    const tenantId = randomUUID();
    const claims = person(tenantId, {
      name: 'Ada Lovelace',
      email: 'ada@example.com',
      profilePictureUrl: 'https://cdn.example.com/ada.png',
      email_verified: true,
      roles: ['Admin'],
    });
    const me = await (await app.as(claims)).me();

    expect(me.role).toBe('admin');
    expect(me.user).toMatchObject({
      id: claims.sub,
      email: 'ada@example.com',
      name: 'Ada Lovelace',
      avatarUrl: 'https://cdn.example.com/ada.png',
      emailVerified: true,
      fronteggRoles: ['Admin'],
    });
    expect(me.user.lastLogin).toBeInstanceOf(Date);
    expect(me.organization).toMatchObject({
      id: tenantId,
      name: 'Ada Lovelace',
      slug: tenantId.slice(0, 8),
      s3BucketName: `org-${tenantId.slice(0, 8)}`,
    });
  });

  it('answers UNAUTHORIZED without a token, and with a refused one', async () => {
    await expectTRPCError((await app.callerFor(undefined)).me(), 'UNAUTHORIZED');
    await expectTRPCError((await app.callerFor('not-a-token')).me(), 'UNAUTHORIZED');
  });

  it('answers FORBIDDEN for a deactivated membership', async () => {
    const claims = person(randomUUID());
    await (await app.as(claims)).me();
    await deactivateMembership(app.db, { userId: claims.sub, organizationId: claims.tenantId });
    const error = await expectTRPCError((await app.as(claims, { provisionEveryRequest: true })).me(), 'FORBIDDEN');
    expect(error.message).toMatch(/deactivated/);
  });

  it('follows the tenant of the current token for a user of two tenants', async () => {
    const sub = randomUUID();
    const [tenantA, tenantB] = [randomUUID(), randomUUID()];
    const inA = await (await app.as({ sub, tenantId: tenantA, roles: ['Admin'] })).me();
    const inB = await (await app.as({ sub, tenantId: tenantB, roles: ['ReadOnly'] })).me();
    expect([inA.organization.id, inA.role]).toEqual([tenantA, 'admin']);
    expect([inB.organization.id, inB.role]).toEqual([tenantB, 'viewer']);
    expect(inB.user.id).toBe(inA.user.id);
  });
});

describe('org.members', () => {
  it('lists the members of the caller’s organization only, paged in joining order', async () => {
    const tenantId = randomUUID();
    const admin = person(tenantId, { roles: ['Admin'], email: 'admin@example.com' });
    await (await app.as(admin)).me();
    const others = [];
    for (const role of ['Editor', 'ReadOnly', 'Editor', 'Editor']) {
      const claims = person(tenantId, { roles: [role] });
      others.push(claims);
      await (await app.as(claims)).me();
    }
    // Someone in another tenant must never appear.
    await (await app.as(person(randomUUID()))).me();

    const caller = await app.as(admin);
    const first = await caller.org.members({ limit: 2 });
    expect(first.items).toHaveLength(2);
    expect(first.nextCursor).toBeTypeOf('string');
    const second = await caller.org.members({ limit: 2, cursor: first.nextCursor });
    const third = await caller.org.members({ limit: 2, cursor: second.nextCursor });
    expect(third.nextCursor).toBeNull();

    const items = [...first.items, ...second.items, ...third.items];
    const joined = await app.db
      .select()
      .from(organizationMembers)
      .where(eq(organizationMembers.organizationId, tenantId))
      .orderBy(asc(organizationMembers.createdAt), asc(organizationMembers.userId));
    expect(items.map((m) => m.userId)).toEqual(joined.map((m) => m.userId));
    expect(new Set(items.map((m) => m.userId))).toEqual(new Set([admin.sub, ...others.map((o) => o.sub)]));
    const adminItem = items.find((m) => m.userId === admin.sub)!;
    expect(adminItem).toMatchObject({ email: 'admin@example.com', role: 'admin', isActive: true });
    expect(adminItem.lastSeenAt).toBeInstanceOf(Date);
    expect(items.map((m) => m.role).sort()).toEqual(['admin', 'member', 'member', 'member', 'viewer']);
    expect(Object.keys(adminItem).sort()).toEqual(['deactivatedBy', 'email', 'isActive', 'lastSeenAt', 'name', 'role', 'userId']);
    expect(adminItem.deactivatedBy).toBeNull();

    const all = await caller.org.members();
    expect(all.items.map((m) => m.userId)).toEqual(items.map((m) => m.userId));
    expect(all.nextCursor).toBeNull();
  });

  it("shows when a member was last seen in this organization, never their activity in another tenant", async () => {
    const [home, elsewhere] = [randomUUID(), randomUUID()];
    const shared = { sub: randomUUID() };
    await (await app.as({ ...shared, tenantId: home })).me();
    const longAgo = new Date('2026-01-01T00:00:00.000Z');
    await app.db
      .update(organizationMembers)
      .set({ lastSeenAt: longAgo })
      .where(and(eq(organizationMembers.userId, shared.sub), eq(organizationMembers.organizationId, home)));

    // Active in another tenant since: that organization's admins see it, this one's do not.
    await (await app.as({ ...shared, tenantId: elsewhere })).me();
    const homeAdmin = await app.as(person(home, { roles: ['Admin'] }));
    const seenHome = (await homeAdmin.org.members()).items.find((m) => m.userId === shared.sub);
    expect(seenHome?.lastSeenAt).toEqual(longAgo);
    const elsewhereAdmin = await app.as(person(elsewhere, { roles: ['Admin'] }));
    const seenElsewhere = (await elsewhereAdmin.org.members()).items.find((m) => m.userId === shared.sub);
    expect(seenElsewhere?.lastSeenAt?.getTime()).toBeGreaterThan(Date.now() - 60_000);
  });

  it('pages members who joined at the same instant without duplicates or gaps', async () => {
    const tenantId = randomUUID();
    const admin = person(tenantId, { roles: ['Admin'] });
    await (await app.as(admin)).me();
    for (let i = 0; i < 4; i += 1) await (await app.as(person(tenantId))).me();
    await app.db
      .update(organizationMembers)
      .set({ createdAt: new Date('2026-01-01T00:00:00.000Z') })
      .where(eq(organizationMembers.organizationId, tenantId));

    const caller = await app.as(admin);
    const pages = await allPages((cursor) => caller.org.members({ limit: 2, cursor }));
    const seen = pages.flat().map((m) => m.userId);
    const byUserId = await app.db
      .select({ userId: organizationMembers.userId })
      .from(organizationMembers)
      .where(eq(organizationMembers.organizationId, tenantId))
      .orderBy(asc(organizationMembers.userId));
    expect(seen).toHaveLength(5);
    expect(seen).toEqual(byUserId.map((m) => m.userId));
  });

  it.each([
    ['member', ['Editor']],
    ['viewer', ['ReadOnly']],
  ])('answers FORBIDDEN to a %s whose token holds no fe.secure.read.users', async (_, roles) => {
    await expectTRPCError((await app.as(person(randomUUID(), { roles, permissions: ['fe.connectivity.*'] }))).org.members(), 'FORBIDDEN');
  });

  it('takes effect with the next token after a demotion', async () => {
    const claims = person(randomUUID(), { roles: ['Admin'], permissions: [] });
    await (await app.as(claims)).org.members();
    await expectTRPCError((await app.as({ ...claims, roles: ['ReadOnly'] })).org.members(), 'FORBIDDEN');
  });

  it.each([
    ['not a cursor at all', 'not-a-cursor'],
    ['unsigned JSON', Buffer.from('{"createdAt":"2026-01-01T00:00:00.000Z","userId":"x"}').toString('base64url')],
  ])('answers BAD_REQUEST to a cursor that is %s', async (_, cursor) => {
    const caller = await app.as(person(randomUUID(), { roles: ['Admin'] }));
    await expectTRPCError(caller.org.members({ cursor }), 'BAD_REQUEST');
  });

  it('answers BAD_REQUEST to a genuine cursor of another organization’s member list', async () => {
    const tenantId = randomUUID();
    for (let i = 0; i < 2; i++) await (await app.as(person(tenantId))).me();
    const { nextCursor } = await (await app.as(person(tenantId, { roles: ['Admin'] }))).org.members({ limit: 1 });
    expect(nextCursor).toBeTypeOf('string');
    const elsewhere = await app.as(person(randomUUID(), { roles: ['Admin'] }));
    await expectTRPCError(elsewhere.org.members({ cursor: nextCursor }), 'BAD_REQUEST');
  });

  it.each([{ limit: 0 }, { limit: 101 }, { limit: 2.5 }])('answers BAD_REQUEST to %j', async (input) => {
    const caller = await app.as(person(randomUUID(), { roles: ['Admin'] }));
    await expectTRPCError(caller.org.members(input), 'BAD_REQUEST');
  });
});
