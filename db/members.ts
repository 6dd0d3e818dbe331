import { and, asc, eq, gt, or } from 'drizzle-orm';
import type { Database } from './database.js';
import { organizationMembers, users } from './schema.js';

export interface MemberPosition {
  createdAt: Date;
  userId: string;
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
      isActive: organizationMembers.isActive,
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
