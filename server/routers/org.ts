import { z } from 'zod';
import { getMembersByOrganizationId } from '../../db/members.js';
import { adminProcedure, router } from '../trpc.js';

const memberCursor = z.object({ createdAt: z.iso.datetime().transform((value) => new Date(value)), userId: z.string() });

export const orgRouter = router({
  /** The current organization's members, in joining order. Admins only. */
  members: adminProcedure
    .meta({ heavy: true })
    .input(
      z
        .object({ limit: z.number().int().min(1).max(100).default(50), cursor: z.string().max(1024).nullish() })
        .default({ limit: 50 }),
    )
    .query(async ({ ctx, input }) => {
      const scope = `org.members:${ctx.organization.id}`;
      const after = input.cursor ? ctx.cursors.decode(scope, memberCursor, input.cursor) : undefined;
      const { members, hasMore } = await getMembersByOrganizationId(ctx.db, {
        organizationId: ctx.organization.id,
        limit: input.limit,
        after,
      });
      const last = members.at(-1);
      return {
        items: members.map(({ joinedAt: _joinedAt, ...member }) => member),
        nextCursor: hasMore && last ? ctx.cursors.encode(scope, { createdAt: last.joinedAt, userId: last.userId }) : null,
      };
    }),
});
