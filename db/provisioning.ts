import { createHash } from 'node:crypto';
import { eq, getTableColumns, sql } from 'drizzle-orm';
import type { AnyPgColumn } from 'drizzle-orm/pg-core';
import type { Database } from './database.js';
import { isUniqueViolation } from './errors.js';
import { createdNow, readOrInsert } from './read-or-insert.js';
import {
  type MemberRole,
  type Organization,
  type OrganizationMember,
  type User,
  organizationMembers,
  organizations,
  users,
} from './schema.js';

/**
 * What provisioning needs from a verified Frontegg user token. An optional field that is
 * `undefined` was absent from the token (the customer's token template removed it): the stored
 * value is kept. `null` is a value and is stored.
 */
export interface IdentityClaims {
  userId: string;
  tenantId: string;
  email?: string | null;
  name?: string | null;
  avatarUrl?: string | null;
  emailVerified?: boolean;
  roles?: readonly string[];
}

export interface ProvisionedIdentity {
  organization: Organization;
  user: User;
  membership: OrganizationMember;
  created: { organization: boolean; user: boolean; membership: boolean };
}

const roleRank: Record<MemberRole, number> = { viewer: 0, member: 1, admin: 2 };

/** `Admin` gives admin, `ReadOnly` or `Viewer` gives viewer, anything else member; the highest wins. */
export function mapFronteggRoles(roles: readonly string[] | undefined): MemberRole {
  const mapped = (roles ?? []).map((key): MemberRole => {
    const normalized = key.toLowerCase();
    if (normalized === 'admin') return 'admin';
    if (normalized === 'readonly' || normalized === 'viewer') return 'viewer';
    return 'member';
  });
  if (mapped.length === 0) return 'member';
  return mapped.reduce((best, role) => (roleRank[role] > roleRank[best] ? role : best));
}

/**
 * Slugs to try for a tenant, in order. The first is the tenant id's first 8 characters; the
 * others add a hash of the whole id so that tenants sharing a prefix still get distinct slugs.
 * Every candidate keeps `org-{slug}` a valid S3 bucket name.
 */
export function organizationSlugCandidates(tenantId: string): string[] {
  const hash = createHash('sha256').update(tenantId).digest('hex');
  const prefix = sanitizeSlug(tenantId.slice(0, 8));
  const base = prefix || hash.slice(0, 8);
  return [base, `${base}-${hash.slice(0, 8)}`, `${base}-${hash.slice(0, 40)}`];
}

function sanitizeSlug(value: string): string {
  return value
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
}

const slugConstraints = ['organizations_slug_unique', 'organizations_s3_bucket_name_unique'];

/**
 * Creates or syncs the organization, user and membership of a verified identity in one
 * transaction of three statements. Each is an idempotent upsert that returns its row, so
 * concurrent first requests converge on the same rows without errors; rows are locked in the
 * order organization, user, membership, so concurrent provisioning cannot deadlock.
 */
export async function provisionIdentity(db: Database, claims: IdentityClaims): Promise<ProvisionedIdentity> {
  return (await provisionIdentityThen(db, claims, async () => undefined)).provisioned;
}

/**
 * `provisionIdentity`, then `work` in the same transaction, so that a first request is one
 * transaction (one commit) however much it does. When `work` throws, nothing is provisioned.
 */
export async function provisionIdentityThen<T>(
  db: Database,
  claims: IdentityClaims,
  work: (tx: Database, provisioned: ProvisionedIdentity) => Promise<T>,
): Promise<{ provisioned: ProvisionedIdentity; result: T }> {
  const slugs = organizationSlugCandidates(claims.tenantId);
  for (const [attempt, slug] of slugs.entries()) {
    try {
      return await db.transaction(async (tx) => {
        const provisioned = await provisionInTransaction(tx, claims, slug);
        return { provisioned, result: await work(tx, provisioned) };
      });
    } catch (error) {
      // Another tenant holds this slug; the organization upsert rolled the transaction back.
      if (attempt < slugs.length - 1 && isUniqueViolation(error, slugConstraints)) continue;
      throw error;
    }
  }
  throw new Error('unreachable: the last slug candidate either returns or throws');
}

async function provisionInTransaction(
  tx: Database,
  claims: IdentityClaims,
  slug: string,
): Promise<ProvisionedIdentity> {
  // None needs another's result, so all three are sent at once: one round trip, not three
  // (prepared, see `Database`). PostgreSQL still runs them in this order, the lock order.
  const [organizationRow, [userRow], [membershipRow]] = await allInOrder([
    upsertOrganization(tx, claims, slug),
    upsertUser(tx, claims),
    upsertMembership(tx, claims),
  ]);
  if (!userRow || !membershipRow) {
    throw new Error('an upsert with RETURNING returned no row');
  }
  const { created: organizationCreated, ...organization } = organizationRow;
  const { created: userCreated, ...user } = userRow;
  const { created: membershipCreated, ...membership } = membershipRow;
  return {
    organization,
    user,
    membership,
    created: { organization: organizationCreated, user: userCreated, membership: membershipCreated },
  };
}

/**
 * `Promise.all` for statements sent together: when one fails, PostgreSQL fails the later ones
 * too ("transaction is aborted"), so the error to report is the first in the order given,
 * whichever rejection JavaScript happens to see first.
 */
async function allInOrder<T extends readonly unknown[]>(promises: { [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const settled = await Promise.allSettled(promises);
  const failed = settled.find((result): result is PromiseRejectedResult => result.status === 'rejected');
  if (failed) throw failed.reason;
  return settled.map((result) => (result as PromiseFulfilledResult<unknown>).value) as unknown as T;
}

/**
 * The tenant's organization, inserted when it is new. An existing organization is only read, so
 * the users of one tenant never queue behind a lock on its row. The name is set on creation only:
 * there is no tenant-name claim, so the first user seen names the organization.
 */
function upsertOrganization(tx: Database, claims: IdentityClaims, slug: string) {
  return readOrInsert(tx, organizations, {
    where: eq(organizations.id, claims.tenantId),
    columns: sql`id, name, slug, s3_bucket_name`,
    values: sql`${claims.tenantId}, ${claims.name || claims.email || slug}, ${slug}, ${`org-${slug}`}`,
    onConflict: sql`on conflict (id) do update set name = ${organizations.name}`,
  });
}

function upsertUser(tx: Database, claims: IdentityClaims) {
  // A profile claim present in the token wins; an absent one keeps the stored value.
  const synced = (column: AnyPgColumn, claim: unknown) =>
    claim === undefined ? sql`${column}` : sql.raw(`excluded.${column.name}`);
  const next = {
    email: synced(users.email, claims.email),
    name: synced(users.name, claims.name),
    avatarUrl: synced(users.avatarUrl, claims.avatarUrl),
    emailVerified: synced(users.emailVerified, claims.emailVerified),
    // Merged, so keys other than frontegg_roles survive.
    profileData: sql`${users.profileData} || excluded.profile_data`,
  };
  const stored = [users.email, users.name, users.avatarUrl, users.emailVerified, users.profileData];

  return tx
    .insert(users)
    .values({
      id: claims.userId,
      email: claims.email ?? null,
      name: claims.name ?? null,
      avatarUrl: claims.avatarUrl ?? null,
      emailVerified: claims.emailVerified ?? false,
      profileData: { frontegg_roles: [...(claims.roles ?? [])] },
      lastLogin: sql`now()`,
    })
    .onConflictDoUpdate({
      target: users.id,
      set: {
        ...next,
        // At most one last_login write a minute per user.
        lastLogin: sql`case when ${users.lastLogin} > now() - interval '1 minute'
          then ${users.lastLogin} else now() end`,
        updatedAt: sql`case when (${sql.join(stored, sql`, `)}) is distinct from
          (${sql.join(Object.values(next), sql`, `)}) then now() else ${users.updatedAt} end`,
      },
    })
    .returning({ ...getTableColumns(users), created: createdNow })
    .prepare('upsert_user')
    .execute();
}

function upsertMembership(tx: Database, claims: IdentityClaims) {
  return tx
    .insert(organizationMembers)
    .values({ userId: claims.userId, organizationId: claims.tenantId, role: mapFronteggRoles(claims.roles) })
    .onConflictDoUpdate({
      target: [organizationMembers.userId, organizationMembers.organizationId],
      // The role follows the token on every login, so a demotion takes effect with the next token.
      // `is_active` is not touched: a deactivated member stays deactivated.
      set: {
        role: sql`excluded.role`,
        updatedAt: sql`case when ${organizationMembers.role} is distinct from excluded.role
          then now() else ${organizationMembers.updatedAt} end`,
      },
    })
    .returning({ ...getTableColumns(organizationMembers), created: createdNow })
    .prepare('upsert_membership')
    .execute();
}
