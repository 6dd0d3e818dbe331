import { createHash } from 'node:crypto';
import { and, eq, getTableColumns, isNotNull, isNull, sql } from 'drizzle-orm';
import type { AnyPgColumn } from 'drizzle-orm/pg-core';
import { notifyMembershipChanged } from './chat-events.js';
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
  /** Frontegg role keys in this tenant; absent, the stored role stays (a new member is a `member`). */
  roles?: readonly string[];
  /**
   * When the claims were true: a token's `iat`, or when a webhook said so. A role or profile older
   * than the one stored is not written, so a token from before a change made by a webhook (a
   * demotion, a new email) does not undo it. None: the oldest time, so such claims are written
   * only over ones as old.
   */
  asOf?: Date;
}

/**
 * What a Frontegg webhook says of the membership, beyond the claims: the person is in the tenant
 * (`joined`: a membership the webhooks removed is back), is not (`removed`), or nothing.
 */
export type MembershipState = 'joined' | 'removed' | 'unchanged';

/**
 * Who provisions: a person signing in (the default), or a Frontegg webhook, which is no sign-in and
 * announces the change to every instance in its transaction (`notifyMembershipChanged`).
 */
export type ProvisioningSource = { kind: 'sign-in' } | { kind: 'webhook'; membership: MembershipState };

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
 * provisioning cannot deadlock. A membership is created removed (`fronteggRemovedAt`) while Frontegg
 * has the user or the tenant deleted.
 */
export async function provisionIdentity(
  db: Database,
  claims: IdentityClaims,
  source: ProvisioningSource = { kind: 'sign-in' },
): Promise<ProvisionedIdentity> {
  return inTransactionWithSlug(db, claims.tenantId, (tx, slug) => provisionInTransaction(tx, claims, slug, source));
}

/**
 * Runs `work` in a transaction with the tenant's first slug candidate, then the next ones while
 * another tenant holds the slug (the organization insert's unique violation rolls it back).
 */
async function inTransactionWithSlug<T>(db: Database, tenantId: string, work: (tx: Database, slug: string) => Promise<T>): Promise<T> {
  const slugs = organizationSlugCandidates(tenantId);
  for (const [attempt, slug] of slugs.entries()) {
    try {
      return await db.transaction((tx) => work(tx, slug));
    } catch (error) {
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
  source: ProvisioningSource,
): Promise<ProvisionedIdentity> {
  // None needs another's result, so all four are sent at once: one round trip, not four
  // (prepared, see `Database`). PostgreSQL still runs them in this order, the lock order, and the
  // read sees the organization the insert before it made.
  const [insertedOrganization, [organization], [userRow], [membershipRow]] = await allInOrder([
    insertOrganization(tx, { id: claims.tenantId, name: claims.name || claims.email || slug }, slug),
    readOrganization(tx, claims),
    upsertUser(tx, claims, source),
    upsertMembership(tx, claims, source),
  ]);
  if (!organization || !userRow || !membershipRow) {
    throw new Error('provisioning read no organization, or an upsert with RETURNING returned no row');
  }
  const { created: userCreated, ...user } = userRow;
  const { created: membershipCreated, ...membership } = membershipRow;
  if (source.kind === 'webhook') await notifyMembershipChanged(tx, { userId: claims.userId, organizationId: claims.tenantId });
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
function insertOrganization(tx: Database, { id, name }: { id: string; name: string }, slug: string) {
  return tx
    .insert(organizations)
    .values({ id, name, slug, s3BucketName: `org-${slug}` })
    .onConflictDoNothing({ target: organizations.id })
    .returning({ id: organizations.id })
    .prepare('insert_organization')
    .execute();
}

/**
 * The organization, share-locked against its deletion (`markOrganizationDeletedById`, which locks it
 * for no key update): a deletion committed meanwhile is seen here and by the membership insert
 * after it, or waits for this transaction and then removes the membership it made. Provisionings
 * never wait for each other on it.
 */
function readOrganization(tx: Database, claims: IdentityClaims) {
  return tx
    .select()
    .from(organizations)
    .where(eq(organizations.id, claims.tenantId))
    .for('share')
    .prepare('read_organization')
    .execute();
}

function upsertUser(tx: Database, claims: IdentityClaims, source: ProvisioningSource) {
  // A profile claim present in the token wins, unless the stored profile is newer (a webhook's,
  // over a token issued before it) or Frontegg deleted the user (whose profile is then kept as it
  // was); an absent claim keeps the stored value.
  const newer = sql`(excluded.profile_as_of >= coalesce(${users.profileAsOf}, '-infinity') and ${users.fronteggDeletedAt} is null)`;
  const synced = (column: AnyPgColumn, claim: unknown) =>
    claim === undefined ? sql`${column}` : sql`case when ${newer} then ${sql.raw(`excluded.${column.name}`)} else ${column} end`;
  const next = {
    email: synced(users.email, claims.email),
    name: synced(users.name, claims.name),
    avatarUrl: synced(users.avatarUrl, claims.avatarUrl),
    emailVerified: synced(users.emailVerified, claims.emailVerified),
    // Merged, so keys other than frontegg_roles survive.
    profileData: sql`case when ${newer} then ${users.profileData} || excluded.profile_data else ${users.profileData} end`,
  };
  const stored = [users.email, users.name, users.avatarUrl, users.emailVerified, users.profileData];
  const signIn = source.kind === 'sign-in';

  return tx
    .insert(users)
    .values({
      id: claims.userId,
      email: claims.email ?? null,
      name: claims.name ?? null,
      avatarUrl: claims.avatarUrl ?? null,
      emailVerified: claims.emailVerified ?? false,
      profileData: claims.roles ? { frontegg_roles: [...claims.roles] } : {},
      profileAsOf: claims.asOf ?? new Date(0),
      lastLogin: signIn ? sql`now()` : null,
    })
    .onConflictDoUpdate({
      target: users.id,
      set: {
        ...next,
        profileAsOf: sql`greatest(${users.profileAsOf}, excluded.profile_as_of)`,
        // At most one last_login write a minute per user; a webhook is no login.
        lastLogin: signIn
          ? sql`case when ${users.lastLogin} > now() - interval '1 minute' or ${users.fronteggDeletedAt} is not null
              then ${users.lastLogin} else now() end`
          : sql`${users.lastLogin}`,
        updatedAt: sql`case when (${sql.join(stored, sql`, `)}) is distinct from
          (${sql.join(Object.values(next), sql`, `)}) then now() else ${users.updatedAt} end`,
      },
    })
    .returning({ ...getTableColumns(users), created: createdNow })
    .prepare('upsert_user')
    .execute();
}

function upsertMembership(tx: Database, claims: IdentityClaims, source: ProvisioningSource) {
  const m = organizationMembers;
  const signIn = source.kind === 'sign-in';
  const membership = source.kind === 'webhook' ? source.membership : 'unchanged';
  // Frontegg deleted the user or the tenant: no membership of theirs comes back. Read in the
  // statement, after the upserts before it in this transaction.
  const deletedInFrontegg = sql`(select coalesce(u.frontegg_deleted_at, o.frontegg_deleted_at)
    from ${users} u, ${organizations} o where u.id = ${claims.userId} and o.id = ${claims.tenantId})`;
  const removedAt = {
    // Kept when repeated: the first removal's time stands.
    removed: sql`coalesce(${m.fronteggRemovedAt}, excluded.frontegg_removed_at)`,
    joined: sql`excluded.frontegg_removed_at`,
    unchanged: sql`${m.fronteggRemovedAt}`,
  }[membership];
  // The token's or webhook's role, unless the one stored is newer; none without a roles claim.
  const role = claims.roles
    ? sql`case when excluded.role_as_of >= coalesce(${m.roleAsOf}, '-infinity') then excluded.role else ${m.role} end`
    : sql`${m.role}`;

  return tx
    .insert(m)
    .values({
      userId: claims.userId,
      organizationId: claims.tenantId,
      role: mapFronteggRoles(claims.roles),
      roleAsOf: claims.roles ? (claims.asOf ?? new Date(0)) : null,
      fronteggRemovedAt: membership === 'removed' ? sql`now()` : deletedInFrontegg,
      lastSeenAt: signIn ? sql`now()` : null,
    })
    .onConflictDoUpdate({
      target: [m.userId, m.organizationId],
      // `is_active` is not touched: what an operator deactivated stays deactivated.
      set: {
        role,
        roleAsOf: sql`greatest(${m.roleAsOf}, excluded.role_as_of)`,
        fronteggRemovedAt: removedAt,
        // At most one write a minute, as for `users.last_login`; a webhook is no visit.
        lastSeenAt: signIn
          ? sql`case when ${m.lastSeenAt} > now() - interval '1 minute' then ${m.lastSeenAt} else now() end`
          : sql`${m.lastSeenAt}`,
        updatedAt: sql`case when (${m.role}, ${m.fronteggRemovedAt}) is distinct from (${role}, ${removedAt})
          then now() else ${m.updatedAt} end`,
      },
    })
    .returning({ ...getTableColumns(m), created: createdNow })
    .prepare('upsert_membership')
    .execute();
}

/**
 * Frontegg deleted the user: every membership of theirs is removed, and any made later (a token
 * still valid in another tenant) is created removed. Their profile and chats are kept (see the
 * README). One transaction; a repeat changes nothing. A user never seen is recorded too, as an id
 * only, so that no token of theirs provisions them afterwards. Returns how many memberships it
 * removed now.
 */
export async function markUserDeletedById(db: Database, { userId }: { userId: string }): Promise<number> {
  return db.transaction(async (tx) => {
    await tx
      .insert(users)
      .values({ id: userId, fronteggDeletedAt: sql`now()` })
      .onConflictDoUpdate({
        target: users.id,
        set: { fronteggDeletedAt: sql`coalesce(${users.fronteggDeletedAt}, excluded.frontegg_deleted_at)` },
      });
    return removeMemberships(tx, { userId });
  });
}

/**
 * Frontegg deleted the tenant: every membership of the organization is removed, and any made later
 * is created removed, until Frontegg creates the tenant again (`restoreOrganizationById`). An
 * organization never seen is recorded as deleted, so that no still-valid token provisions it. One
 * transaction; a repeat changes nothing. Returns how many memberships it removed now.
 */
export async function markOrganizationDeletedById(db: Database, { organizationId }: { organizationId: string }): Promise<number> {
  return inTransactionWithSlug(db, organizationId, async (tx, slug) => {
    await insertOrganization(tx, { id: organizationId, name: slug }, slug);
    // Waits for provisionings under way in it (see `readOrganization`), and holds off new ones;
    // not foreign-key checks (a reply's usage row), which would deadlock with a chat write.
    await tx.select({ id: organizations.id }).from(organizations).where(eq(organizations.id, organizationId)).for('no key update');
    await tx
      .update(organizations)
      .set({ fronteggDeletedAt: sql`coalesce(${organizations.fronteggDeletedAt}, now())` })
      .where(eq(organizations.id, organizationId));
    return removeMemberships(tx, { organizationId });
  });
}

/**
 * Marks removed by Frontegg every membership of the user, or of the organization, not removed yet
 * (a repeat keeps the first time), and tells every instance when `tx` commits. Returns how many.
 */
async function removeMemberships(tx: Database, whose: { userId: string } | { organizationId: string }): Promise<number> {
  const m = organizationMembers;
  const removed = await tx
    .update(m)
    .set({ fronteggRemovedAt: sql`now()`, updatedAt: sql`now()` })
    .where(and('userId' in whose ? eq(m.userId, whose.userId) : eq(m.organizationId, whose.organizationId), isNull(m.fronteggRemovedAt)))
    .returning({ userId: m.userId });
  await notifyMembershipChanged(tx, whose);
  return removed.length;
}

/**
 * Frontegg created the tenant: if it had been deleted here (Frontegg reactivates a tenant created
 * again with its id), the organization takes new members again. Those its deletion removed stay
 * removed until Frontegg invites or activates them again: a creation delivered late must not bring
 * back everyone a deletion removed. Returns whether it was deleted.
 */
export async function restoreOrganizationById(db: Database, { organizationId }: { organizationId: string }): Promise<boolean> {
  return db.transaction(async (tx) => {
    const restored = await tx
      .update(organizations)
      .set({ fronteggDeletedAt: null })
      .where(and(eq(organizations.id, organizationId), isNotNull(organizations.fronteggDeletedAt)))
      .returning({ id: organizations.id });
    await notifyMembershipChanged(tx, { organizationId });
    return restored.length > 0;
  });
}
