import { randomUUID } from 'node:crypto';
import { and, eq } from 'drizzle-orm';
import { SignJWT, base64url } from 'jose';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { chatSessions, organizationMembers, organizations, users } from '../../db/schema.js';
import { MAX_WEBHOOK_BODY_BYTES } from '../../server/webhooks/frontegg.js';
import { deactivateMembership } from '../support/database.js';
import { clientError } from '../support/errors.js';
import { watchEvents } from '../support/events.js';
import { WEBHOOK_SECRET, deliverWebhook, fronteggUser, signWebhookHeader, webhookBody } from '../support/frontegg-webhooks.js';
import { type TestApp, startHttpServer, startTestApp } from '../support/test-app.js';

/**
 * Two instances of the server on one database, each with its own member cache, event streams and
 * LISTEN connection, both accepting Frontegg's webhooks: a delivery reaches one, and a person's
 * calls go to either.
 */
let first: TestApp;
let second: TestApp;
let one: Awaited<ReturnType<typeof startHttpServer>>;
let other: Awaited<ReturnType<typeof startHttpServer>>;

beforeAll(async () => {
  first = await startTestApp();
  second = await startTestApp({ alongside: { database: first.database, idp: first.idp } });
  one = await startHttpServer(first, { fronteggWebhookSecret: WEBHOOK_SECRET });
  other = await startHttpServer(second, { fronteggWebhookSecret: WEBHOOK_SECRET });
});
afterAll(async () => {
  await Promise.all([one?.close(), other?.close()]);
  await second?.close();
  await first?.close();
});

/** A person of a tenant with a token from the test's Frontegg, and typed clients of both instances. */
async function signIn(claims: { sub: string; tenantId: string; roles?: string[]; permissions?: string[]; iat?: number }) {
  const token = await first.idp.mintToken({ claims });
  return { token, onOne: one.clientFor(token), onOther: other.clientFor(token) };
}

const membershipOf = async (userId: string, organizationId: string) =>
  (
    await first.db
      .select()
      .from(organizationMembers)
      .where(and(eq(organizationMembers.userId, userId), eq(organizationMembers.organizationId, organizationId)))
  )[0];

/** Resolves once `call` is refused FORBIDDEN; fails after a second. */
async function forbiddenWithinASecond(call: () => Promise<unknown>) {
  await vi.waitFor(
    async () => {
      const error = await clientError(call());
      expect(error.data?.code).toBe('FORBIDDEN');
    },
    { timeout: 1_000, interval: 10 },
  );
}

describe('authenticating a delivery', () => {
  /** A member whose removal each refused delivery asks for: it must change nothing. */
  async function memberAndRemoval() {
    const user = fronteggUser();
    const person = await signIn({ sub: user.id, tenantId: user.tenantId });
    await person.onOne.me.query();
    return { user, person, removal: webhookBody('frontegg.user.removedFromTenant', user) };
  }

  async function expectNothingChanged({ user, person }: Awaited<ReturnType<typeof memberAndRemoval>>) {
    expect((await membershipOf(user.id, user.tenantId))?.fronteggRemovedAt).toBeNull();
    expect((await person.onOther.me.query()).user.id).toBe(user.id);
  }

  it('answers 401 and changes nothing without the x-webhook-secret header', async () => {
    const case_ = await memberAndRemoval();
    expect(await deliverWebhook(one.url, case_.removal, { header: null })).toMatchObject({ status: 401 });
    expect(await deliverWebhook(one.url, case_.removal, { header: '' })).toMatchObject({ status: 401 });
    await expectNothingChanged(case_);
  });

  it('answers 401 for a token signed with another secret, or not a token at all', async () => {
    const case_ = await memberAndRemoval();
    const wrong = await signWebhookHeader({ secret: 'another-secret-of-the-same-length!!' });
    expect(await deliverWebhook(one.url, case_.removal, { header: wrong })).toMatchObject({ status: 401 });
    expect(await deliverWebhook(one.url, case_.removal, { header: WEBHOOK_SECRET })).toMatchObject({ status: 401 });
    // The right header with its signature cut off.
    const right = await signWebhookHeader();
    expect(await deliverWebhook(one.url, case_.removal, { header: right.slice(0, right.lastIndexOf('.') + 1) })).toMatchObject({ status: 401 });
    await expectNothingChanged(case_);
  });

  it('answers 401 for another algorithm: an unsigned token (none), RS256, or HS512 with the right secret', async () => {
    const case_ = await memberAndRemoval();
    const unsigned = `${base64url.encode(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${base64url.encode('{}')}.`;
    const rs256 = await new SignJWT({}).setProtectedHeader({ alg: 'RS256', kid: first.idp.key.kid }).sign(first.idp.key.privateKey);
    const hs512 = await new SignJWT({}).setProtectedHeader({ alg: 'HS512' }).sign(new TextEncoder().encode(WEBHOOK_SECRET));
    for (const header of [unsigned, rs256, hs512]) {
      expect(await deliverWebhook(one.url, case_.removal, { header })).toMatchObject({ status: 401 });
    }
    await expectNothingChanged(case_);
  });

  it('answers 401 for an expired token, and takes one whose exp is ahead', async () => {
    const case_ = await memberAndRemoval();
    const now = Math.floor(Date.now() / 1000);
    const expired = await signWebhookHeader({ claims: { iat: now - 120, exp: now - 60 } });
    expect(await deliverWebhook(one.url, case_.removal, { header: expired })).toMatchObject({ status: 401 });
    await expectNothingChanged(case_);

    const current = await signWebhookHeader({ claims: { iat: now, exp: now + 60 } });
    expect(await deliverWebhook(one.url, case_.removal, { header: current })).toMatchObject({ status: 200 });
  });

  it('answers 401 for a body that is not JSON or is over the limit, with a valid signature', async () => {
    const case_ = await memberAndRemoval();
    expect(await deliverWebhook(one.url, '{"eventKey": "frontegg.user.removedFromTenant",')).toMatchObject({ status: 401 });
    const padded = { ...case_.removal, padding: 'x'.repeat(MAX_WEBHOOK_BODY_BYTES) };
    expect(await deliverWebhook(one.url, padded)).toMatchObject({ status: 401 });
    await expectNothingChanged(case_);
  });

  it('logs why a delivery was refused, never the header or the body', async () => {
    await deliverWebhook(one.url, { eventKey: 'frontegg.user.deleted', user: { id: 'x', email: 'secret@example.com' } }, { header: 'nope.nope.nope' });
    const line = first.logs.findLast((entry) => entry.msg === 'Frontegg webhook refused');
    expect(line).toMatchObject({ reason: 'invalid_signature', requestId: expect.any(String) });
    expect(JSON.stringify(first.logs)).not.toMatch(/secret@example\.com|nope\.nope/);
  });

  it('answers 404 on a server without a webhook secret, and 405 to a GET', async () => {
    const unconfigured = await startHttpServer(first);
    try {
      const response = await fetch(`${unconfigured.url}/webhooks/frontegg`, { method: 'POST', body: '{}' });
      expect(response.status).toBe(404);
    } finally {
      await unconfigured.close();
    }
    expect(await deliverWebhook(one.url, null, { method: 'GET' })).toMatchObject({ status: 405 });
  });
});

describe('a person removed from a tenant', () => {
  it('is refused FORBIDDEN on the other instance within a second, and their open event streams end', async () => {
    const user = fronteggUser();
    const ada = await signIn({ sub: user.id, tenantId: user.tenantId });
    // Remembered on both instances, with a stream open on each.
    await ada.onOne.me.query();
    await ada.onOther.me.query();
    const streams = [watchEvents(ada.onOne), watchEvents(ada.onOther)];
    await Promise.all(streams.map((stream) => stream.connected()));

    const delivered = await deliverWebhook(one.url, webhookBody('frontegg.user.removedFromTenant', user));
    expect(delivered).toEqual({ status: 200, body: { status: 'applied' } });
    // Acknowledged: the instance that received it refuses at once.
    expect((await clientError(ada.onOne.me.query())).data?.code).toBe('FORBIDDEN');
    await forbiddenWithinASecond(() => ada.onOther.chat.listSessions.query());
    for (const stream of streams) {
      await stream.until(() => expect(stream.errors.map((error) => (error as { data?: { code?: string } }).data?.code)).toContain('FORBIDDEN'), 1_000);
      stream.close();
    }
  });

  it('applies a repeated delivery as the same state: the first removal’s time stands', async () => {
    const user = fronteggUser();
    await (await signIn({ sub: user.id, tenantId: user.tenantId })).onOne.me.query();
    const removal = webhookBody('frontegg.user.removedFromTenant', user);
    await deliverWebhook(one.url, removal);
    const removed = await membershipOf(user.id, user.tenantId);
    expect(removed?.fronteggRemovedAt).toBeInstanceOf(Date);
    expect(await deliverWebhook(other.url, removal)).toMatchObject({ status: 200 });
    expect(await membershipOf(user.id, user.tenantId)).toEqual(removed);
    expect((await first.db.select().from(users).where(eq(users.id, user.id)))[0]?.updatedAt).toBeInstanceOf(Date);
  });

  it('is refused before their first call: the removal records the membership as removed', async () => {
    const user = fronteggUser({ roles: [{ id: randomUUID(), key: 'Admin', name: 'Admin' }] });
    // Given a token before the removal, and still holding it after.
    const late = await signIn({ sub: user.id, tenantId: user.tenantId, iat: Math.floor(Date.now() / 1000) - 1 });
    expect(await deliverWebhook(one.url, webhookBody('frontegg.user.removedFromTenant', user))).toMatchObject({ status: 200 });
    expect((await clientError(late.onOther.me.query())).data?.code).toBe('FORBIDDEN');

    const admin = await signIn({ sub: randomUUID(), tenantId: user.tenantId, roles: ['Admin'] });
    const listed = (await admin.onOne.org.members.query()).items.find((member) => member.userId === user.id);
    expect(listed).toMatchObject({ isActive: false, deactivatedBy: 'frontegg' });
  });

  it('comes back with an invitation, a creation or an activation, on both instances', async () => {
    for (const eventKey of ['frontegg.user.invitedToTenant', 'frontegg.user.created', 'frontegg.user.activated', 'frontegg.user.signedUp']) {
      const user = fronteggUser();
      const person = await signIn({ sub: user.id, tenantId: user.tenantId });
      await person.onOne.me.query();
      await person.onOther.me.query();
      await deliverWebhook(one.url, webhookBody('frontegg.user.removedFromTenant', user));
      await forbiddenWithinASecond(() => person.onOther.me.query());

      expect(await deliverWebhook(other.url, webhookBody(eventKey, user))).toMatchObject({ status: 200 });
      expect((await person.onOther.me.query()).user.id).toBe(user.id);
      await vi.waitFor(async () => expect((await person.onOne.me.query()).user.id).toBe(user.id), { timeout: 1_000, interval: 10 });
      expect(await membershipOf(user.id, user.tenantId)).toMatchObject({ isActive: true, fronteggRemovedAt: null });
    }
  });

  it('stays out when an operator deactivated the membership, whatever Frontegg says afterwards', async () => {
    const user = fronteggUser();
    const person = await signIn({ sub: user.id, tenantId: user.tenantId });
    await person.onOne.me.query();
    // As an operator does it: in SQL, is_active = false and nothing else.
    await deactivateMembership(first.db, { userId: user.id, organizationId: user.tenantId });

    for (const eventKey of ['frontegg.user.invitedToTenant', 'frontegg.user.removedFromTenant', 'frontegg.user.activated', 'frontegg.user.created']) {
      expect(await deliverWebhook(one.url, webhookBody(eventKey, user))).toMatchObject({ status: 200 });
    }
    expect(await membershipOf(user.id, user.tenantId)).toMatchObject({ isActive: false, fronteggRemovedAt: null });
    expect((await clientError(person.onOther.me.query())).data?.code).toBe('FORBIDDEN');
    const admin = await signIn({ sub: randomUUID(), tenantId: user.tenantId, roles: ['Admin'] });
    const listed = (await admin.onOne.org.members.query()).items.find((member) => member.userId === user.id);
    expect(listed).toMatchObject({ isActive: false, deactivatedBy: 'operator' });
  });
});

describe('provisioning ahead of the first sign-in', () => {
  it('creates the organization, user and membership from frontegg.user.created, with the role, and logs ids only', async () => {
    const user = fronteggUser({ roles: [{ id: randomUUID(), key: 'Admin', name: 'Admin' }], verified: true });
    expect(await deliverWebhook(one.url, webhookBody('frontegg.user.created', user))).toEqual({ status: 200, body: { status: 'applied' } });

    const [row] = await first.db.select().from(users).where(eq(users.id, user.id));
    expect(row).toMatchObject({ email: 'cheli@example.com', name: 'cheli', emailVerified: true, lastLogin: null });
    expect(await membershipOf(user.id, user.tenantId)).toMatchObject({ role: 'admin', isActive: true, fronteggRemovedAt: null, lastSeenAt: null });
    const [organization] = await first.db.select().from(organizations).where(eq(organizations.id, user.tenantId));
    expect(organization?.slug).toBe(user.tenantId.slice(0, 8));

    const me = await (await signIn({ sub: user.id, tenantId: user.tenantId, roles: ['Admin'] })).onOther.me.query();
    expect(me).toMatchObject({ role: 'admin', organization: { id: user.tenantId } });
    const line = first.logs.findLast((entry) => entry.msg === 'Frontegg webhook applied');
    expect(line).toMatchObject({ eventKey: 'frontegg.user.created', userId: user.id, organizationId: user.tenantId, membership: 'joined' });
    expect(JSON.stringify(first.logs)).not.toContain('cheli@example.com');
  });
});

describe('events that snapshot a user rather than report a change', () => {
  it('do not set back the role or profile a token wrote: a late sign-up or invitation with no roles demotes no one', async () => {
    const user = fronteggUser({ roles: [] });
    const admin = await signIn({ sub: user.id, tenantId: user.tenantId, roles: ['Admin'] });
    expect((await admin.onOne.me.query()).role).toBe('admin');
    for (const eventKey of ['frontegg.user.signedUp', 'frontegg.user.created', 'frontegg.user.invitedToTenant', 'frontegg.user.activated', 'frontegg.user.removedFromTenant']) {
      await deliverWebhook(one.url, webhookBody(eventKey, user));
    }
    expect(await membershipOf(user.id, user.tenantId)).toMatchObject({ role: 'admin', fronteggRemovedAt: expect.any(Date) });
    expect((await first.db.select().from(users).where(eq(users.id, user.id)))[0]?.email).toBe('test.user@example.com');
  });

  it('keep the role of an invitation when a later sign-up or activation carries no roles', async () => {
    const user = fronteggUser({ roles: [{ id: randomUUID(), key: 'Admin', name: 'Admin' }] });
    await deliverWebhook(one.url, webhookBody('frontegg.user.invitedToTenant', user));
    const withoutRoles = { ...user, roles: [] };
    for (const eventKey of ['frontegg.user.activated', 'frontegg.user.signedUp']) {
      await deliverWebhook(one.url, webhookBody(eventKey, withoutRoles));
    }
    expect(await membershipOf(user.id, user.tenantId)).toMatchObject({ role: 'admin' });
  });

  it('take the user object’s id when eventContext.userId names someone else (the admin who acted)', async () => {
    const user = fronteggUser();
    const person = await signIn({ sub: user.id, tenantId: user.tenantId });
    await person.onOne.me.query();
    const body = { ...webhookBody('frontegg.user.removedFromTenant', user), eventContext: { tenantId: user.tenantId, userId: randomUUID() } };
    expect(await deliverWebhook(one.url, body)).toMatchObject({ status: 200 });
    await forbiddenWithinASecond(() => person.onOther.me.query());
  });

  it('are applied in the order delivered: an invitation delivered after the removal it preceded wins (Frontegg sends no time)', async () => {
    const user = fronteggUser();
    const person = await signIn({ sub: user.id, tenantId: user.tenantId });
    await person.onOne.me.query();
    await deliverWebhook(one.url, webhookBody('frontegg.user.removedFromTenant', user));
    await deliverWebhook(other.url, webhookBody('frontegg.user.invitedToTenant', user));
    expect((await person.onOne.me.query()).user.id).toBe(user.id);
  });
});

describe('frontegg.user.updated', () => {
  it('syncs the profile and the role; a token issued before the change does not set the role back', async () => {
    const user = fronteggUser();
    const admin = await signIn({ sub: user.id, tenantId: user.tenantId, roles: ['Admin'] });
    expect((await admin.onOne.me.query()).role).toBe('admin');
    await admin.onOther.org.usage.query();

    const demoted = { ...user, name: 'Cheli Renamed', email: 'cheli.new@example.com', roles: [{ id: randomUUID(), key: 'Member', name: 'Member' }] };
    expect(await deliverWebhook(one.url, webhookBody('frontegg.user.updated', demoted))).toMatchObject({ status: 200 });

    // Still-valid token that says Admin, on both instances: the role is the webhook's.
    await forbiddenWithinASecond(() => admin.onOther.org.usage.query());
    const me = await admin.onOne.me.query();
    expect(me).toMatchObject({ role: 'member', user: { name: 'Cheli Renamed', email: 'cheli.new@example.com' } });

    // A token issued after the change writes the role Frontegg gives from then on, when it is
    // provisioned (a refreshed token with the same claims waits for the member cache's lifetime).
    // (The webhook's change counts as of its arrival plus the 5 s of clock skew tokens are allowed.)
    const later = Math.floor(Date.now() / 1000) + 7;
    const fresh = await first.idp.mintToken({ claims: { sub: user.id, tenantId: user.tenantId, roles: ['Admin'], iat: later } });
    expect((await (await first.callerFor(fresh, { provisionEveryRequest: true })).me()).role).toBe('admin');
  });

  it('syncs only a membership this service has: it adds no one to a tenant', async () => {
    const user = fronteggUser();
    await (await signIn({ sub: user.id, tenantId: user.tenantId })).onOne.me.query();
    const elsewhere = randomUUID();
    const inAnotherTenant = { ...user, tenantId: elsewhere, roles: ['Admin'] };
    const body = webhookBody('frontegg.user.updated', inAnotherTenant);
    expect(await deliverWebhook(one.url, body)).toEqual({ status: 200, body: { status: 'ignored' } });
    expect(await membershipOf(user.id, elsewhere)).toBeUndefined();
    expect(await first.db.select().from(organizations).where(eq(organizations.id, elsewhere))).toEqual([]);
  });

  it('takes the roles only for the tenant the user object is of', async () => {
    const user = fronteggUser({ roles: ['Admin'] });
    await deliverWebhook(one.url, webhookBody('frontegg.user.created', user));
    const elsewhere = { ...user, name: 'Renamed Elsewhere', tenantId: randomUUID(), roles: ['ReadOnly'] };
    await deliverWebhook(one.url, webhookBody('frontegg.user.updated', elsewhere, { tenantId: user.tenantId }));
    expect(await membershipOf(user.id, user.tenantId)).toMatchObject({ role: 'admin' });
    expect((await first.db.select().from(users).where(eq(users.id, user.id)))[0]?.name).toBe('Renamed Elsewhere');
  });
});

describe('deletions', () => {
  it('frontegg.user.deleted removes every membership of the user, keeps profile and chats, and is final', async () => {
    const user = fronteggUser();
    const [home, away, never] = [user.tenantId, randomUUID(), randomUUID()];
    const inHome = await signIn({ sub: user.id, tenantId: home });
    const inAway = await signIn({ sub: user.id, tenantId: away });
    const session = await inHome.onOne.chat.createSession.mutate({ title: 'Kept' });
    await inAway.onOther.me.query();

    const deletion = { eventKey: 'frontegg.user.deleted', eventContext: { tenantId: home, userId: user.id }, user };
    expect(await deliverWebhook(other.url, deletion)).toMatchObject({ status: 200 });
    await forbiddenWithinASecond(() => inHome.onOne.me.query());
    await forbiddenWithinASecond(() => inAway.onOne.me.query());
    // A still-valid token for a tenant they never used makes no membership that works, and writes
    // nothing of the profile that was kept.
    const stillValid = one.clientFor(await first.idp.mintToken({ claims: { sub: user.id, tenantId: never, email: 'other@example.com', iat: Math.floor(Date.now() / 1000) + 60 } }));
    expect((await clientError(stillValid.me.query())).data?.code).toBe('FORBIDDEN');

    const [profile] = await first.db.select().from(users).where(eq(users.id, user.id));
    expect(profile).toMatchObject({ email: 'test.user@example.com', fronteggDeletedAt: expect.any(Date) });
    expect(await first.db.select({ id: chatSessions.id }).from(chatSessions).where(eq(chatSessions.id, session.id))).toHaveLength(1);

    // A repeat, and a creation delivered late, change nothing.
    expect(await deliverWebhook(one.url, deletion)).toMatchObject({ status: 200 });
    expect(await deliverWebhook(one.url, webhookBody('frontegg.user.created', user))).toMatchObject({ status: 200 });
    expect(await membershipOf(user.id, home)).toMatchObject({ fronteggRemovedAt: expect.any(Date) });
    expect((await first.db.select().from(users).where(eq(users.id, user.id)))[0]?.fronteggDeletedAt).toEqual(profile?.fronteggDeletedAt);
    const line = second.logs.findLast((entry) => String(entry.msg).startsWith('Frontegg webhook applied: user deleted'));
    expect(line).toMatchObject({ userId: user.id, membershipsRemoved: 2 });
  });

  it('frontegg.user.deleted for a user never seen keeps any token of theirs from provisioning them', async () => {
    const userId = randomUUID();
    expect(await deliverWebhook(one.url, { eventKey: 'frontegg.user.deleted', eventContext: { userId } })).toMatchObject({ status: 200 });
    expect((await clientError((await signIn({ sub: userId, tenantId: randomUUID() })).onOne.me.query())).data?.code).toBe('FORBIDDEN');
  });

  it('frontegg.tenant.deleted for a tenant never seen keeps any token of it from provisioning it', async () => {
    const tenantId = randomUUID();
    expect(await deliverWebhook(one.url, { eventKey: 'frontegg.tenant.deleted', eventContext: { tenantId } })).toMatchObject({ status: 200 });
    expect((await clientError((await signIn({ sub: randomUUID(), tenantId })).onOther.me.query())).data?.code).toBe('FORBIDDEN');
    await deliverWebhook(one.url, webhookBody('frontegg.user.invitedToTenant', fronteggUser({ tenantId })));
    expect((await clientError((await signIn({ sub: randomUUID(), tenantId })).onOne.me.query())).data?.code).toBe('FORBIDDEN');
  });

  it('frontegg.tenant.created lets a deleted tenant take members again; those its deletion removed come back as Frontegg invites them', async () => {
    const tenantId = randomUUID();
    const adaUser = fronteggUser({ tenantId });
    const ada = await signIn({ sub: adaUser.id, tenantId });
    await ada.onOne.me.query();
    await deliverWebhook(one.url, { eventKey: 'frontegg.tenant.deleted', eventContext: { tenantId } });
    await forbiddenWithinASecond(() => ada.onOther.me.query());

    expect(await deliverWebhook(other.url, { eventKey: 'frontegg.tenant.created', eventContext: { tenantId } })).toMatchObject({ status: 200 });
    // A newcomer's token provisions normally again; Ada stays out (a late creation must not undo a deletion)…
    expect((await (await signIn({ sub: randomUUID(), tenantId })).onOther.me.query()).organization.id).toBe(tenantId);
    expect((await clientError(ada.onOne.me.query())).data?.code).toBe('FORBIDDEN');
    // …until Frontegg invites her again.
    await deliverWebhook(one.url, webhookBody('frontegg.user.invitedToTenant', adaUser));
    await vi.waitFor(async () => expect((await ada.onOther.me.query()).organization.id).toBe(tenantId), { timeout: 1_000, interval: 10 });
  });

  it('frontegg.tenant.deleted removes every membership of the organization, and none is made afterwards', async () => {
    const tenantId = randomUUID();
    const ada = await signIn({ sub: randomUUID(), tenantId, roles: ['Admin'] });
    const grace = await signIn({ sub: randomUUID(), tenantId });
    await ada.onOne.me.query();
    await grace.onOther.me.query();
    const elsewhere = await signIn({ sub: randomUUID(), tenantId: randomUUID() });
    await elsewhere.onOne.me.query();

    const deletion = { eventKey: 'frontegg.tenant.deleted', eventContext: { tenantId } };
    expect(await deliverWebhook(one.url, deletion)).toMatchObject({ status: 200 });
    await forbiddenWithinASecond(() => ada.onOther.me.query());
    await forbiddenWithinASecond(() => grace.onOther.me.query());
    expect((await clientError((await signIn({ sub: randomUUID(), tenantId })).onOne.me.query())).data?.code).toBe('FORBIDDEN');
    expect((await elsewhere.onOther.me.query()).organization.id).not.toBe(tenantId);
    expect(await deliverWebhook(other.url, deletion)).toMatchObject({ status: 200 });
  });
});

describe('the instance that receives a webhook', () => {
  it('refuses the person at once itself, without waiting to hear its own notification', async () => {
    // An instance that hears nothing on the channel: only its own forgetting can refuse the person.
    const deaf = await startTestApp({ alongside: { database: first.database, idp: first.idp } });
    await deaf.deps.chatEvents.close();
    const server = await startHttpServer(deaf, { fronteggWebhookSecret: WEBHOOK_SECRET });
    try {
      const user = fronteggUser();
      const person = server.clientFor(await first.idp.mintToken({ claims: { sub: user.id, tenantId: user.tenantId } }));
      await person.me.query();
      expect(await deliverWebhook(server.url, webhookBody('frontegg.user.removedFromTenant', user))).toMatchObject({ status: 200 });
      expect((await clientError(person.me.query())).data?.code).toBe('FORBIDDEN');
    } finally {
      await server.close();
      await deaf.close();
    }
  });
});

describe('other deliveries', () => {
  it('answers 200 and changes nothing for an event this service does not act on', async () => {
    const user = fronteggUser();
    for (const eventKey of ['frontegg.tenant.updated', 'frontegg.user.authenticated', 'something.else', 'constructor', '__proto__']) {
      expect(await deliverWebhook(one.url, webhookBody(eventKey, user))).toEqual({ status: 200, body: { status: 'ignored' } });
    }
    expect(await first.db.select().from(users).where(eq(users.id, user.id))).toEqual([]);
  });

  it('answers 400, naming the field, for an event it acts on whose fields are missing or malformed', async () => {
    const user = fronteggUser();
    const cases = [
      { eventKey: 'frontegg.user.removedFromTenant', user: { ...user, tenantId: undefined }, eventContext: {} },
      { eventKey: 'frontegg.tenant.deleted', eventContext: {} },
      { eventKey: 'frontegg.user.created', eventContext: { tenantId: user.tenantId }, user: { ...user, id: '\u0000' } },
      { eventKey: 42 },
    ];
    for (const body of cases) expect((await deliverWebhook(one.url, body)).status).toBe(400);
    expect(await first.db.select().from(users).where(eq(users.id, user.id))).toEqual([]);
  });

  it('keeps the person’s chats through a removal and a re-invitation', async () => {
    const user = fronteggUser();
    const person = await signIn({ sub: user.id, tenantId: user.tenantId });
    const session = await person.onOne.chat.createSession.mutate({ title: 'Mine' });
    await deliverWebhook(one.url, webhookBody('frontegg.user.removedFromTenant', user));
    await deliverWebhook(one.url, webhookBody('frontegg.user.invitedToTenant', user));
    expect((await person.onOther.chat.listSessions.query()).items.map((item) => item.id)).toContain(session.id);
  });
});
