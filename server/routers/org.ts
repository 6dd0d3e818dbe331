import { z } from 'zod';
import { getMembersByOrganizationId } from '../../db/members.js';
import { getUsageByOrganization } from '../../db/replies.js';
import { adminProcedure, requiring, router } from '../trpc.js';

/** Where a page of usage ends, and the period it is of (a default `to` is the time of the first page). */
const usageCursor = z.object({
  month: z.string(),
  userId: z.string(),
  model: z.string(),
  from: z.iso.datetime().transform((value) => new Date(value)),
  to: z.iso.datetime().transform((value) => new Date(value)),
});

// Dates PostgreSQL and a month's arithmetic can hold: from 2000 to a year ahead.
const usageDate = z
  .date()
  .refine((date) => date.getTime() >= Date.UTC(2000, 0, 1) && date.getTime() <= Date.now() + 366 * 86_400_000, {
    error: 'must be between 2000-01-01 and a year from now',
  });

/** The first instant of the UTC month `months` months after the one `date` is in. */
const monthStart = (date: Date, months = 0) => new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth() + months, 1));

const memberCursor = z.object({ createdAt: z.iso.datetime().transform((value) => new Date(value)), userId: z.string() });

export const orgRouter = router({
  /**
   * The current organization's members, in joining order: for admins, and for anyone whose token
   * holds `fe.secure.read.users` (Frontegg's permission to read users). `isActive` is false for a
   * member Frontegg removed or an operator deactivated; `deactivatedBy` says which.
   */
  members: requiring({ permission: 'fe.secure.read.users', role: 'admin' })
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

  /**
   * The assistant's replies and the tokens they used in the current organization, per month (UTC,
   * `YYYY-MM`), per user and per model, months in order: from `from` (default: the start of the month eleven
   * months ago) to `to` (default: now), `to` excluded; `nextCursor` pages on through that same
   * period. Admins only. A reply counts in the month it ended.
   */
  usage: adminProcedure
    .meta({ heavy: true })
    .input(
      z
        .object({
          from: usageDate.optional(),
          to: usageDate.optional(),
          limit: z.number().int().min(1).max(1000).default(100),
          cursor: z.string().max(1024).nullish(),
        })
        .refine(({ from, to }) => !from || !to || from < to, { error: '`from` must be before `to`', path: ['from'] })
        .default({ limit: 100 }),
    )
    .query(async ({ ctx, input }) => {
      const scope = `org.usage:${ctx.organization.id}`;
      const after = input.cursor ? ctx.cursors.decode(scope, usageCursor, input.cursor) : undefined;
      // A cursor pages on through the period of the first page.
      const to = after?.to ?? input.to ?? new Date();
      const from = after?.from ?? input.from ?? monthStart(to, -11);
      const { usage, hasMore } = await getUsageByOrganization(ctx.db, { organizationId: ctx.organization.id, from, to, limit: input.limit, after });
      const last = usage.at(-1);
      return {
        from,
        to,
        items: usage,
        nextCursor: hasMore && last ? ctx.cursors.encode(scope, { month: last.month, userId: last.userId, model: last.model, from, to }) : null,
      };
    }),
});
