import { createHash } from 'node:crypto';
import { eq, getTableColumns, sql } from 'drizzle-orm';
import type { AnyPgColumn } from 'drizzle-orm/pg-core';
import type { Database } from './database.js';
import { isUniqueViolation } from './errors.js';
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
 * Every candidate keeps `org-{slug}` a valid S3 bucket name: 3 to 63 characters of a-z, 0-9 and
 * `-`, and none of the suffixes S3 reserves (a tenant `s3alias…` would give `org-s3alias`).
 */
export function organizationSlugCandidates(tenantId: string): string[] {
  const hash = createHash('sha256').update(tenantId).digest('hex');
  const prefix = sanitizeSlug(tenantId.slice(0, 8));
  const base = prefix || hash.slice(0, 8);
  return [base, `${base}-${hash.slice(0, 8)}`, `${base}-${hash.slice(0, 40)}`].filter(
    (slug) => !s3ReservedSuffixes.some((suffix) => `org-${slug}`.endsWith(suffix)),
  );
}

// S3's rules for general purpose buckets: these endings belong to access points and other S3 features.
const s3ReservedSuffixes = ['-s3alias', '--ol-s3', '.mrap', '--x-s3', '--table-s3'];

function sanitizeSlug(value: string): string {
  return value
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
}

const slugConstraints = ['organizations_slug_unique', 'organizations_s3_bucket_name_unique'];

/**
 * Creates or syncs the organization, user and membership of a verified identity in one short
 * transaction. Every statement is idempotent, so concurrent first requests converge on the same
 * rows without errors; rows are locked in the order organization, user, membership, so concurrent
 * provisioning cannot deadlock.
 */
export async function provisionIdentity(db: Database, claims: IdentityClaims): Promise<ProvisionedIdentity> {
  const slugs = organizationSlugCandidates(claims.tenantId);
  for (const [attempt, slug] of slugs.entries()) {
    try {
      return await db.transaction((tx) => provisionInTransaction(tx, claims, slug));
    } catch (error) {
      // Another tenant holds this slug; the organization insert rolled the transaction back.
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
  // None needs another's result, so all four are sent at once: one round trip, not four
  // (prepared, see `Database`). PostgreSQL still runs them in this order, the lock order, and the
  // read sees the organization the insert before it made.
  const [insertedOrganization, [organization], [userRow], [membershipRow]] = await allInOrder([
    insertOrganization(tx, claims, slug),
    readOrganization(tx, claims),
    upsertUser(tx, claims),
    upsertMembership(tx, claims),
  ]);
  if (!organization || !userRow || !membershipRow) {
    throw new Error('provisioning read no organization, or an upsert with RETURNING returned no row');
  }
  const { created: userCreated, ...user } = userRow;
  const { created: membershipCreated, ...membership } = membershipRow;
  return {
    organization,
    user,
    membership,
    created: { organization: insertedOrganization.length > 0, user: userCreated, membership: membershipCreated },
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
 * True only for a row the upsert inserted: a row it updated carries the updating transaction in
 * `xmax`. PostgreSQL offers no other way for `ON CONFLICT DO UPDATE … RETURNING` to tell the two apart.
 */
const createdNow = sql<boolean>`(xmax = 0)`;

/**
 * Inserts the tenant's organization when it is new, and does nothing to an existing one: no
 * update, so no row lock, and the users of one tenant never queue behind each other on it. The
 * name is set on creation only: there is no tenant-name claim, so the first user seen names it.
 * Returns the row only when it inserted one. Another tenant holding `slug` is a unique violation.
 */
function insertOrganization(tx: Database, claims: IdentityClaims, slug: string) {
  return tx
    .insert(organizations)
    .values({ id: claims.tenantId, name: claims.name || claims.email || slug, slug, s3BucketName: `org-${slug}` })
    .onConflictDoNothing({ target: organizations.id })
    .returning({ id: organizations.id })
    .prepare('insert_organization')
    .execute();
}

function readOrganization(tx: Database, claims: IdentityClaims) {
  return tx
    .select()
    .from(organizations)
    .where(eq(organizations.id, claims.tenantId))
    .prepare('read_organization')
    .execute();
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
    .values({
      userId: claims.userId,
      organizationId: claims.tenantId,
      role: mapFronteggRoles(claims.roles),
      lastSeenAt: sql`now()`,
    })
    .onConflictDoUpdate({
      target: [organizationMembers.userId, organizationMembers.organizationId],
      // The role follows the token on every login, so a demotion takes effect with the next token.
      // `is_active` is not touched: a deactivated member stays deactivated.
      set: {
        role: sql`excluded.role`,
        // At most one write a minute, as for `users.last_login`.
        lastSeenAt: sql`case when ${organizationMembers.lastSeenAt} > now() - interval '1 minute'
          then ${organizationMembers.lastSeenAt} else now() end`,
        updatedAt: sql`case when ${organizationMembers.role} is distinct from excluded.role
          then now() else ${organizationMembers.updatedAt} end`,
      },
    })
    .returning({ ...getTableColumns(organizationMembers), created: createdNow })
    .prepare('upsert_membership')
    .execute();
}
