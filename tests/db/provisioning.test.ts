import { randomUUID } from 'node:crypto';
import { eq, inArray, sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { DatabaseHandle } from '../../db/database.js';
import {
  type IdentityClaims,
  mapFronteggRoles,
  markOrganizationDeletedById,
  organizationSlugCandidates,
  provisionIdentity,
} from '../../db/provisioning.js';
import { organizationMembers, organizations, replyUsage, users } from '../../db/schema.js';
import { deactivateMembership, openTestDatabase, whileInsertsFail } from '../support/database.js';

let database: DatabaseHandle;
beforeAll(async () => {
  database = await openTestDatabase();
});
afterAll(() => database.close());

const s3BucketName = /^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$/;

function identity(overrides: Partial<IdentityClaims> = {}): IdentityClaims {
  return {
    userId: randomUUID(),
    tenantId: randomUUID(),
    email: 'ada@example.com',
    name: 'Ada Lovelace',
    avatarUrl: 'https://cdn.example.com/ada.png',
    emailVerified: true,
    roles: ['Admin'],
    ...overrides,
  };
}

async function countRows(tenantId: string, userIds: string[]) {
  const db = database.db;
  const [orgs] = await db.select({ n: sql<number>`count(*)::int` }).from(organizations).where(eq(organizations.id, tenantId));
  const [people] = await db.select({ n: sql<number>`count(*)::int` }).from(users).where(inArray(users.id, userIds));
  const [members] = await db
    .select({ n: sql<number>`count(*)::int` })
    .from(organizationMembers)
    .where(eq(organizationMembers.organizationId, tenantId));
  return { organizations: orgs?.n, users: people?.n, memberships: members?.n };
}

describe('mapFronteggRoles', () => {
  it.each([
    [['Admin'], 'admin'],
    [['ReadOnly'], 'viewer'],
    [['Viewer'], 'viewer'],
    [['Editor'], 'member'],
    [[], 'member'],
    [undefined, 'member'],
    [['ReadOnly', 'Editor'], 'member'],
    [['ReadOnly', 'Admin'], 'admin'],
    [['Editor', 'Admin', 'Viewer'], 'admin'],
  ] as const)('%j gives %s', (roles, expected) => {
    expect(mapFronteggRoles(roles)).toBe(expected);
  });
});

describe('organizationSlugCandidates', () => {
  it('starts with the first 8 characters of the tenant id, lower-cased', () => {
    expect(organizationSlugCandidates('9023B0AB-47f4-44a0-a683-34d7cfa6f989')[0]).toBe('9023b0ab');
  });

  it.each(['9023b0ab-47f4', 'ACME', 'a', '--__--__--', 'Ünïcødé tenant', 'x'.repeat(300), 'ab..cd__ef', 's3alias-corp', 'S3ALIAS', 'x-s3alias'])(
    'gives valid, distinct slugs and S3 bucket names for %j',
    (tenantId) => {
      const slugs = organizationSlugCandidates(tenantId);
      expect(slugs.length).toBeGreaterThanOrEqual(2);
      expect(new Set(slugs).size).toBe(slugs.length);
      for (const slug of slugs) {
        expect(slug).toMatch(/^[a-z0-9]+(-[a-z0-9]+)*$/);
        expect(`org-${slug}`).toMatch(s3BucketName);
        // Endings S3 reserves for access points and other features.
        expect(`org-${slug}`).not.toMatch(/(-s3alias|--ol-s3|\.mrap|--x-s3|--table-s3)$/);
      }
    },
  );

  it('is backed by the database, which refuses a bucket name with a reserved ending', async () => {
    const insert = database.db
      .insert(organizations)
      .values({ id: randomUUID(), name: 'x', slug: `s3alias-${Date.now()}`, s3BucketName: `org-x${Date.now()}-s3alias` });
    await expect(insert).rejects.toMatchObject({ cause: { message: expect.stringMatching(/organizations_s3_bucket_name_format/) } });
  });

  it('provisions a tenant whose id starts with "s3alias" under a bucket name S3 accepts', async () => {
    const tenantId = `s3alias-${randomUUID()}`;
    const { organization } = await provisionIdentity(database.db, identity({ tenantId }));
    expect(organization.s3BucketName).toMatch(/^org-s3alias-[0-9a-f]{8}$/);
  });
});

describe('provisionIdentity', () => {
  it('creates the organization, user and membership from the token claims', async () => {
    const claims = identity({ tenantId: `Tenant_${randomUUID()}` });
    const { organization, user, membership, created } = await provisionIdentity(database.db, claims);

    expect(created).toEqual({ organization: true, user: true, membership: true });
    expect(organization).toMatchObject({
      id: claims.tenantId,
      name: 'Ada Lovelace',
      slug: claims.tenantId.slice(0, 8).toLowerCase().replace('_', '-'),
    });
    expect(organization.s3BucketName).toBe(`org-${organization.slug}`);
    expect(user).toMatchObject({
      id: claims.userId,
      email: 'ada@example.com',
      name: 'Ada Lovelace',
      avatarUrl: 'https://cdn.example.com/ada.png',
      emailVerified: true,
      profileData: { frontegg_roles: ['Admin'] },
    });
    expect(user.lastLogin).toBeInstanceOf(Date);
    expect(membership).toMatchObject({
      userId: claims.userId,
      organizationId: claims.tenantId,
      role: 'admin',
      isActive: true,
    });
  });

  it('is idempotent: a second login creates nothing and returns the same rows', async () => {
    const claims = identity();
    const first = await provisionIdentity(database.db, claims);
    const second = await provisionIdentity(database.db, claims);

    expect(second.created).toEqual({ organization: false, user: false, membership: false });
    expect(second.organization).toEqual(first.organization);
    expect(second.membership).toEqual(first.membership);
    expect(second.user.updatedAt).toEqual(first.user.updatedAt);
    expect(await countRows(claims.tenantId, [claims.userId])).toEqual({ organizations: 1, users: 1, memberships: 1 });
  });

  it('only reads an existing organization, so its users never queue on a lock of its row', async () => {
    const tenantId = randomUUID();
    const rowVersion = async () => {
      const [row] = await database.db
        .select({ version: sql<string>`xmin::text` })
        .from(organizations)
        .where(eq(organizations.id, tenantId));
      return row?.version;
    };
    await provisionIdentity(database.db, identity({ tenantId }));
    const before = await rowVersion();
    await Promise.all([1, 2, 3].map(() => provisionIdentity(database.db, identity({ tenantId }))));
    expect(await rowVersion()).toBe(before);
  });

  it('keeps the profile in sync with later tokens, and keeps what a token leaves out', async () => {
    const claims = identity();
    await provisionIdentity(database.db, claims);
    await database.db
      .update(users)
      .set({ profileData: { frontegg_roles: ['Admin'], theme: 'dark' } })
      .where(eq(users.id, claims.userId));

    const { user } = await provisionIdentity(database.db, {
      ...claims,
      email: 'ada@new.example.com',
      name: 'Ada King',
      avatarUrl: null,
      emailVerified: false,
      roles: ['Editor'],
    });
    expect(user).toMatchObject({
      email: 'ada@new.example.com',
      name: 'Ada King',
      avatarUrl: null,
      emailVerified: false,
      profileData: { frontegg_roles: ['Editor'], theme: 'dark' },
    });

    // A token template without these claims does not erase them.
    const { user: kept } = await provisionIdentity(database.db, {
      userId: claims.userId,
      tenantId: claims.tenantId,
      roles: ['Editor'],
    });
    expect(kept).toMatchObject({ email: 'ada@new.example.com', name: 'Ada King', emailVerified: false });
  });

  it('moves updated_at only when the profile changed', async () => {
    const claims = identity();
    const first = await provisionIdentity(database.db, claims);
    await new Promise((resolve) => setTimeout(resolve, 5));
    const same = await provisionIdentity(database.db, claims);
    expect(same.user.updatedAt).toEqual(first.user.updatedAt);
    const renamed = await provisionIdentity(database.db, { ...claims, name: 'Someone Else' });
    expect(renamed.user.updatedAt.getTime()).toBeGreaterThan(first.user.updatedAt.getTime());
  });

  it('re-syncs the role on every login, so a demotion takes effect with the next token', async () => {
    const claims = identity({ roles: ['Admin'] });
    expect((await provisionIdentity(database.db, claims)).membership.role).toBe('admin');
    expect((await provisionIdentity(database.db, { ...claims, roles: ['ReadOnly'] })).membership.role).toBe('viewer');
    expect((await provisionIdentity(database.db, { ...claims, roles: ['Editor'] })).membership.role).toBe('member');
    expect((await provisionIdentity(database.db, { ...claims, roles: ['Admin', 'ReadOnly'] })).membership.role).toBe(
      'admin',
    );
  });

  it('leaves a deactivated membership deactivated', async () => {
    const claims = identity();
    await provisionIdentity(database.db, claims);
    await deactivateMembership(database.db, { userId: claims.userId, organizationId: claims.tenantId });
    expect((await provisionIdentity(database.db, claims)).membership.isActive).toBe(false);
  });

  it('writes last_login at most once a minute', async () => {
    const claims = identity();
    const first = await provisionIdentity(database.db, claims);
    const soon = await provisionIdentity(database.db, claims);
    expect(soon.user.lastLogin).toEqual(first.user.lastLogin);

    const longAgo = new Date(Date.now() - 2 * 60_000);
    await database.db.update(users).set({ lastLogin: longAgo }).where(eq(users.id, claims.userId));
    const later = await provisionIdentity(database.db, claims);
    expect(later.user.lastLogin!.getTime()).toBeGreaterThan(longAgo.getTime() + 60_000);
  });

  it('does not let a later user rename the organization', async () => {
    const tenantId = randomUUID();
    await provisionIdentity(database.db, identity({ tenantId, name: 'First Person' }));
    const { organization } = await provisionIdentity(database.db, identity({ tenantId, name: 'Second Person' }));
    expect(organization.name).toBe('First Person');
  });

  it('names the organization after the email, then the slug, when the first user has no name', async () => {
    const byEmail = await provisionIdentity(database.db, identity({ name: undefined, email: 'grace@example.com' }));
    expect(byEmail.organization.name).toBe('grace@example.com');
    const bySlug = await provisionIdentity(database.db, identity({ name: null, email: null }));
    expect(bySlug.organization.name).toBe(bySlug.organization.slug);
  });

  it('gives two tenants that share their first 8 characters distinct, valid slugs', async () => {
    const prefix = randomUUID().slice(0, 8);
    const first = await provisionIdentity(database.db, identity({ tenantId: `${prefix}-first-tenant` }));
    const second = await provisionIdentity(database.db, identity({ tenantId: `${prefix.toUpperCase()}-second` }));

    expect(first.organization.slug).toBe(prefix);
    expect(second.organization.slug).not.toBe(first.organization.slug);
    expect(second.organization.slug.startsWith(prefix)).toBe(true);
    for (const { organization } of [first, second]) expect(organization.s3BucketName).toMatch(s3BucketName);
    // The second tenant keeps its slug on later logins.
    const again = await provisionIdentity(database.db, identity({ tenantId: `${prefix.toUpperCase()}-second` }));
    expect(again.organization.slug).toBe(second.organization.slug);
  });

  it('provisions tenants sharing a prefix concurrently, without errors', async () => {
    const prefix = randomUUID().slice(0, 8);
    const tenants = Array.from({ length: 6 }, (_, i) => `${prefix}-tenant-${i}`);
    const results = await Promise.all(tenants.map((tenantId) => provisionIdentity(database.db, identity({ tenantId }))));
    expect(new Set(results.map((r) => r.organization.slug)).size).toBe(tenants.length);
  });

  it('makes one organization, user and membership for 50 concurrent first requests of one user', async () => {
    const claims = identity();
    const results = await Promise.all(Array.from({ length: 50 }, () => provisionIdentity(database.db, claims)));

    expect(results.filter((r) => r.created.organization)).toHaveLength(1);
    expect(results.filter((r) => r.created.user)).toHaveLength(1);
    expect(results.filter((r) => r.created.membership)).toHaveLength(1);
    expect(new Set(results.map((r) => r.organization.slug))).toEqual(new Set([claims.tenantId.slice(0, 8)]));
    expect(await countRows(claims.tenantId, [claims.userId])).toEqual({ organizations: 1, users: 1, memberships: 1 });
  });

  it('makes one organization and 20 memberships for 20 users of a new tenant at once', async () => {
    const tenantId = randomUUID();
    const people = Array.from({ length: 20 }, (_, i) => identity({ tenantId, name: `Person ${i}` }));
    const results = await Promise.all(people.map((claims) => provisionIdentity(database.db, claims)));

    expect(results.filter((r) => r.created.organization)).toHaveLength(1);
    expect(new Set(results.map((r) => r.organization.name)).size).toBe(1);
    expect(
      await countRows(
        tenantId,
        people.map((p) => p.userId),
      ),
    ).toEqual({ organizations: 1, users: 20, memberships: 20 });
  });

  it('gives one user a membership in each tenant, with a role per tenant', async () => {
    const userId = randomUUID();
    const [tenantA, tenantB] = [randomUUID(), randomUUID()];
    const inA = await provisionIdentity(database.db, identity({ userId, tenantId: tenantA, roles: ['Admin'] }));
    const inB = await provisionIdentity(database.db, identity({ userId, tenantId: tenantB, roles: ['ReadOnly'] }));

    expect(inA.membership).toMatchObject({ organizationId: tenantA, role: 'admin' });
    expect(inB.membership).toMatchObject({ organizationId: tenantB, role: 'viewer' });
    expect(inB.created).toEqual({ organization: true, user: false, membership: true });
    const memberships = await database.db.select().from(organizationMembers).where(eq(organizationMembers.userId, userId));
    expect(memberships.map((m) => m.role).sort()).toEqual(['admin', 'viewer']);
  });

  it('creates organization, user and membership together or not at all', async () => {
    const claims = identity();
    // A real failure of the last statement: PostgreSQL refuses this user's membership.
    const failure = { table: 'organization_members', column: 'user_id', value: claims.userId, message: 'refused by test' };
    await whileInsertsFail(database.db, failure, async () => {
      await expect(provisionIdentity(database.db, claims)).rejects.toThrow();
    });
    expect(await countRows(claims.tenantId, [claims.userId])).toEqual({ organizations: 0, users: 0, memberships: 0 });
  });
});

// Two connections at once: PGlite runs one transaction at a time, so the race exists on PostgreSQL only.
describe.skipIf(!inject('databaseUrl'))('a tenant deleted while a member is being provisioned', () => {
  it.each([
    ['a first sign-in', { kind: 'sign-in' } as const],
    ['an invitation (webhook)', { kind: 'webhook', membership: 'joined' } as const],
  ])('leaves removed the membership that %s was still making when the deletion came', async (_, source) => {
    const claims = identity();
    await provisionIdentity(database.db, { ...claims, userId: randomUUID() });
    // PostgreSQL holds the provisioning open right after it inserted the membership.
    const name = `slow_membership_${randomUUID().replaceAll('-', '')}`;
    await database.db.execute(
      sql.raw(`create function ${name}() returns trigger language plpgsql as $$
        begin if new.user_id = '${claims.userId}' then perform pg_sleep(0.3); end if; return new; end $$`),
    );
    await database.db.execute(sql.raw(`create trigger ${name} after insert on organization_members for each row execute function ${name}()`));
    try {
      const provisioning = provisionIdentity(database.db, claims, source);
      await new Promise((resolve) => setTimeout(resolve, 100));
      await markOrganizationDeletedById(database.db, { organizationId: claims.tenantId });
      await provisioning;
    } finally {
      await database.db.execute(sql.raw(`drop trigger ${name} on organization_members; drop function ${name}()`));
    }
    const [membership] = await database.db.select().from(organizationMembers).where(eq(organizationMembers.userId, claims.userId));
    expect(membership?.fronteggRemovedAt).toBeInstanceOf(Date);
  });

  it('does not deadlock with a chat write that holds the membership and then records a reply’s usage', async () => {
    const { organization, user } = await provisionIdentity(database.db, identity());
    let deletion: Promise<number> | undefined;
    // As a reply ends: the member's row locked first (`openEventLog`), then a row referring to the organization.
    await database.db.transaction(async (tx) => {
      await tx.select().from(organizationMembers).where(eq(organizationMembers.userId, user.id)).for('no key update');
      deletion = markOrganizationDeletedById(database.db, { organizationId: organization.id });
      await new Promise((resolve) => setTimeout(resolve, 200));
      await tx.insert(replyUsage).values({ messageId: randomUUID(), organizationId: organization.id, userId: user.id, model: 'test' });
    });
    expect(await deletion).toBe(1);
  });
});
