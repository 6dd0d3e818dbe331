import { and, asc, eq, gt, or, sql } from 'drizzle-orm';
import type { Database } from './database.js';
import { type OrganizationMember, organizationMembers, users } from './schema.js';

/**
 * Whether a member may use the organization: neither an operator (`is_active = false`) nor
 * Frontegg's webhooks (`frontegg_removed_at`) took them out. In SQL as `membershipActiveSql`.
 */
export const isMembershipActive = (membership: Pick<OrganizationMember, 'isActive' | 'fronteggRemovedAt'>) =>
  membership.isActive && membership.fronteggRemovedAt === null;

export const membershipActiveSql = sql<boolean>`(${organizationMembers.isActive} and ${organizationMembers.fronteggRemovedAt} is null)`;

/**
 * Who took a member out: an operator (whose deactivation outlasts anything Frontegg says, so it is
 * named first), or Frontegg (removed, or the user or tenant deleted).
 */
export type Deactivation = 'frontegg' | 'operator';

export interface MemberPosition {
  createdAt: Date;
  userId: string;
}

/** The membership of `userId` in `organizationId`, if there is one. */
export async function getMembershipByIds(db: Database, { userId, organizationId }: { userId: string; organizationId: string }) {
  const [membership] = await db
    .select()
    .from(organizationMembers)
    .where(and(eq(organizationMembers.userId, userId), eq(organizationMembers.organizationId, organizationId)));
  return membership;
}

/**
 * An organization's members in joining order (ties broken by user id), `limit` at a time,
 * starting after `after`. `hasMore` comes from fetching one row beyond the page.
 */
export async function getMembersByOrganizationId(
  db: Database,
  { organizationId, limit, after }: { organizationId: string; limit: number; after?: MemberPosition | undefined },
) {
  const rows = await db
    .select({
      userId: organizationMembers.userId,
      email: users.email,
      name: users.name,
      role: organizationMembers.role,
      isActive: membershipActiveSql,
      deactivatedBy: sql<Deactivation | null>`case when not ${organizationMembers.isActive} then 'operator'
        when ${organizationMembers.fronteggRemovedAt} is not null then 'frontegg' end`,
      lastSeenAt: organizationMembers.lastSeenAt,
      joinedAt: organizationMembers.createdAt,
    })
    .from(organizationMembers)
    .innerJoin(users, eq(users.id, organizationMembers.userId))
    .where(
      and(
        eq(organizationMembers.organizationId, organizationId),
        after &&
          or(
            gt(organizationMembers.createdAt, after.createdAt),
            and(eq(organizationMembers.createdAt, after.createdAt), gt(organizationMembers.userId, after.userId)),
          ),
      ),
    )
    .orderBy(asc(organizationMembers.createdAt), asc(organizationMembers.userId))
    .limit(limit + 1);
  return { members: rows.slice(0, limit), hasMore: rows.length > limit };
}
