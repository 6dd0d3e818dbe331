import { TRPCError, initTRPC } from '@trpc/server';
import superjson from 'superjson';
import { ZodError, z } from 'zod';
import { isDatabaseUnavailable } from '../db/errors.js';
import { AccessTokenError } from './auth/access-token.js';
import type { Context, Member } from './context.js';
import { withDeadline } from './deadline.js';

const t = initTRPC.context<Context>().create({
  transformer: superjson,
  // Stack traces stay in the logs, never in responses.
  isDev: false,
  errorFormatter({ shape, error }) {
    const { stack: _stack, ...data } = shape.data;
    // Anything not thrown on purpose (driver errors, bugs) reaches the caller as a generic message.
    const internal = error.code === 'INTERNAL_SERVER_ERROR';
    const invalidInput = error.code === 'BAD_REQUEST' && error.cause instanceof ZodError;
    // tRPC's own refusals of a request it cannot read (bad JSON, a broken transformer payload)
    // carry the parser's words as their message; ours are thrown without a cause.
    const unreadable = error.code === 'BAD_REQUEST' && !invalidInput && error.cause !== undefined;
    return {
      ...shape,
      message: internal
        ? 'Internal server error'
        : invalidInput
          ? 'Invalid input'
          : unreadable
            ? 'The request could not be read'
            : shape.message,
      data: {
        ...data,
        authReason: error.cause instanceof AccessTokenError ? error.cause.reason : null,
        validation: invalidInput ? z.flattenError(error.cause as ZodError) : null,
      },
    };
  },
});

export const router = t.router;
export const middleware = t.middleware;
export const createCallerFactory = t.createCallerFactory;

const unavailable = (cause: unknown) =>
  new TRPCError({ code: 'SERVICE_UNAVAILABLE', message: 'The service is temporarily unavailable; try again shortly', cause });

/**
 * A database that cannot be reached or is overloaded answers 503, so clients know to retry; so
 * does a call with no answer after `ctx.procedureTimeoutMs`. The timeouts on connections and
 * statements end nearly every stuck call sooner; this bounds whatever they miss.
 */
async function unavailableWhenStuck<Result extends { ok: true } | { ok: false; error: TRPCError }>(
  ctx: Context,
  call: () => Promise<Result>,
): Promise<Result> {
  const result = await withDeadline(call(), ctx.procedureTimeoutMs, () =>
    unavailable(new Error(`No answer within ${ctx.procedureTimeoutMs} ms`)),
  );
  if (!result.ok && isDatabaseUnavailable(result.error.cause)) throw unavailable(result.error.cause);
  return result;
}

export const publicProcedure = t.procedure.use(({ ctx, next }) => unavailableWhenStuck(ctx, next));

/** Refuses a request without a valid access token. Verifying needs no database. */
export const signedInProcedure = publicProcedure.use(({ ctx, next }) => {
  if (ctx.auth.status !== 'verified') throw ctx.auth.error;
  return next();
});

/** The caller's rows, refused when their membership is deactivated. */
export function activeMember(member: Member): Member {
  if (!member.membership.isActive) {
    throw new TRPCError({ code: 'FORBIDDEN', message: 'Your membership in this organization is deactivated' });
  }
  return member;
}

/**
 * A middleware that runs the rest of the procedure as the caller (`ctx.withMember`), with the
 * context narrowed to what `narrow` makes of their rows; `narrow` throws to refuse them. A caller
 * without a valid token is refused first, as by `signedInProcedure`. On a first request the rest
 * runs in the provisioning transaction (`ctx.db` is that transaction), which a failed call rolls
 * back.
 */
export function asCaller<Narrowed extends object>(narrow: (member: Member) => Narrowed) {
  return t.middleware(({ ctx, next }) =>
    ctx.withMember(
      (member, db) => next({ ctx: { ...narrow(member), db } }),
      (result) => result.ok,
    ),
  );
}

/**
 * `publicProcedure.use(asCaller(narrow))` as one middleware, for procedures without input (no
 * input check has to come between): the calls every page load makes pay for one middleware,
 * not two. Each costs a few microseconds of context copying in tRPC, which shows at thousands of
 * requests a second.
 */
export function callerProcedure<Narrowed extends object>(narrow: (member: Member) => Narrowed) {
  return t.procedure.use(({ ctx, next }) =>
    unavailableWhenStuck(ctx, () =>
      ctx.withMember(
        (member, db) => next({ ctx: { ...narrow(member), db } }),
        (result) => result.ok,
      ),
    ),
  );
}

/**
 * Narrows the context to the caller's `user`, `organization` and `membership`, present for
 * sure. A procedure with input puts this after `.input()`, so bad input is refused before the
 * database is touched: `signedInProcedure.input(schema).use(asMember)`.
 */
export const asMember = asCaller(activeMember);

/** `asMember`, for admins of the organization only. */
export const asAdmin = asCaller((member) => {
  if (activeMember(member).membership.role !== 'admin') {
    throw new TRPCError({ code: 'FORBIDDEN', message: 'This requires the admin role in the organization' });
  }
  return member;
});

/** `publicProcedure.use(asMember)`, for procedures without input. */
export const protectedProcedure = callerProcedure(activeMember);
