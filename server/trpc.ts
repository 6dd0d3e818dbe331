import { TRPCError, initTRPC } from '@trpc/server';
import superjson from 'superjson';
import { ZodError, z } from 'zod';
import { isDatabaseUnavailable } from '../db/errors.js';
import { isMembershipActive } from '../db/members.js';
import { type IdentityClaims, provisionIdentity } from '../db/provisioning.js';
import type { MemberRole } from '../db/schema.js';
import { AccessTokenError } from './auth/access-token.js';
import { hasPermission } from './auth/permissions.js';
import type { Context } from './context.js';
import { withDeadline } from './deadline.js';
import { type Member, personKey } from './member-cache.js';
import { countProvisioned } from './metrics.js';

/** What a procedure declares about itself with `.meta()`. */
export interface ProcedureMeta {
  /**
   * Reads or writes a lot (a page of messages, a write): counted against the caller's
   * `HEAVY_CALLS_PER_PERSON`, beyond which it answers TOO_MANY_REQUESTS.
   */
  heavy?: boolean;
  /**
   * Writes: counted against the caller's `RATE_LIMIT_WRITES_PER_MINUTE` in this instance, beyond
   * which it answers TOO_MANY_REQUESTS with the seconds to wait (`retryAfterSeconds`).
   */
  write?: boolean;
}

/** Why a write was refused: the caller's writes are over the limit for `retryAfterSeconds`. */
export class WriteRateLimitedError extends Error {
  override name = 'WriteRateLimitedError';
  constructor(readonly retryAfterSeconds: number) {
    super(`You are writing faster than this service allows; try again in ${retryAfterSeconds} s`);
  }
}

/**
 * Subscriptions (Server-Sent Events) send a heartbeat this often: proxies and some EventSource
 * implementations drop a stream silent for 30 to 45 s.
 */
export const SSE_HEARTBEAT_MS = 10_000;

const t = initTRPC.context<Context>().meta<ProcedureMeta>().create({
  transformer: superjson,
  sse: {
    ping: { enabled: true, intervalMs: SSE_HEARTBEAT_MS },
    // Tells tRPC's client to reconnect a stream that has sent nothing, heartbeats included, this long.
    client: { reconnectAfterInactivityMs: 3 * SSE_HEARTBEAT_MS },
  },
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
        // Also sent as the `Retry-After` header (server/http.ts).
        retryAfterSeconds: error.cause instanceof WriteRateLimitedError ? error.cause.retryAfterSeconds : null,
      },
    };
  },
});

export const router = t.router;
export const createCallerFactory = t.createCallerFactory;

/**
 * Counts every call of a procedure by path and code, and times it; what it was refused for when
 * that is worth a family of its own. Errors tRPC raises before any procedure runs (an unknown
 * path, an unreadable batch) are counted by the HTTP handler, which skips those counted here.
 */
const measured = t.middleware(async function measured({ ctx, path, next }) {
  const { metrics } = ctx;
  const started = performance.now();
  const result = await next();
  metrics.requestDuration.observe({ procedure: path }, (performance.now() - started) / 1000);
  if (result.ok) {
    metrics.requests.inc({ procedure: path, code: 'OK' });
    return result;
  }
  const { error } = result;
  metrics.requests.inc({ procedure: path, code: error.code });
  metrics.countedErrors.add(error);
  if (error.cause instanceof AccessTokenError) metrics.tokenRefusals.inc({ reason: error.cause.reason });
  else if (error.code === 'SERVICE_UNAVAILABLE' && isDatabaseUnavailable(error.cause)) metrics.databaseUnavailable.inc();
  return result;
});

/** The base of every procedure: counted and timed. */
const procedure = t.procedure.use(measured);

/** SERVICE_UNAVAILABLE: the client may try again shortly. */
export const unavailable = (cause: unknown) =>
  new TRPCError({ code: 'SERVICE_UNAVAILABLE', message: 'The service is temporarily unavailable; try again shortly', cause });

/**
 * A database that cannot be reached or is overloaded answers 503, so clients know to retry,
 * whether the failure was thrown before `next()` (provisioning) or came back from it (the
 * procedure); so does a call with no answer after `ctx.procedureTimeoutMs`. The timeouts on
 * connections and statements end nearly every stuck call sooner; this bounds whatever they miss.
 */
async function unavailableWhenStuck<Result extends { ok: true } | { ok: false; error: TRPCError }>(
  ctx: Context,
  call: () => Promise<Result>,
): Promise<Result> {
  let result: Result;
  try {
    result = await withDeadline(call(), ctx.procedureTimeoutMs, () =>
      unavailable(new Error(`No answer within ${ctx.procedureTimeoutMs} ms`)),
    );
  } catch (error) {
    throw isDatabaseUnavailable(error) ? unavailable(error) : error;
  }
  if (!result.ok && isDatabaseUnavailable(result.error.cause)) throw unavailable(result.error.cause);
  return result;
}

/** Refuses a request without a valid access token; verifying it needed no database. */
const requireSignIn = t.middleware(function requireSignIn({ ctx, next }) {
  if (ctx.auth.status !== 'verified') throw ctx.auth.error;
  return next();
});

/**
 * The caller, provisioned: a valid token is required, then (for a heavy procedure) a place among the
 * caller's heavy calls in progress, then the member cache gives their rows or provisions them in a
 * transaction of its own, and a deactivated membership is refused. The
 * procedure gets the rows as plain data. The deadline is in the same middleware, so the calls
 * every page load makes pay for one more level of tRPC's per-middleware context copying than
 * `measured`'s, not two.
 */
const provisionCaller = t.middleware(function provisionCaller({ ctx, meta, path, next }) {
  if (ctx.auth.status !== 'verified') throw ctx.auth.error;
  const { identity } = ctx.auth;
  const { auth } = ctx;
  const person = personKey(identity);
  // Both limits are counted before any database work, so a flood of one person's calls
  // provisions nothing either. A write refused for its heavy place takes nothing from the
  // person's writes a minute, and one over that limit gives its place back.
  const leave = meta?.heavy ? ctx.heavyCalls.enter(person) : noop;
  if (!leave) {
    ctx.metrics.limited.inc({ procedure: path, limit: 'calls_in_progress' });
    throw new TRPCError({ code: 'TOO_MANY_REQUESTS', message: 'You have too many requests in progress; try again shortly' });
  }
  const waitSeconds = meta?.write ? ctx.writes.take(person) : 0;
  if (waitSeconds > 0) {
    leave();
    ctx.metrics.limited.inc({ procedure: path, limit: 'writes_per_minute' });
    const cause = new WriteRateLimitedError(waitSeconds);
    throw new TRPCError({ code: 'TOO_MANY_REQUESTS', message: cause.message, cause });
  }
  const work = (async () => {
    let remembered = true;
    const { user, organization, membership } = await ctx.members.getOrProvision(identity, () => {
      remembered = false;
      return provisionMember(ctx, identity);
    });
    ctx.metrics.memberCacheLookups.inc({ result: remembered ? 'hit' : 'miss' });
    if (!isMembershipActive(membership)) {
      throw new TRPCError({ code: 'FORBIDDEN', message: 'Your membership in this organization is deactivated' });
    }
    // `auth` goes on narrowed: a procedure sees the verified token (its `expiresAt`) as present.
    return next({ ctx: { auth, user, organization, membership } });
  })();
  // The place is given back once the work is done, also when the deadline answered first, and
  // once the answer has left (or its connection closed): an answer a client does not read still
  // holds the memory of its pages.
  if (leave !== noop) void Promise.allSettled([work, ctx.answered]).then(leave);
  return unavailableWhenStuck(ctx, () => work);
});

const noop = () => {};

async function provisionMember({ db, log, metrics }: Context, identity: IdentityClaims): Promise<Member> {
  const { organization, user, membership, created } = await provisionIdentity(db, identity);
  const ids = { organizationId: organization.id, userId: user.id };
  if (created.organization) log.info({ ...ids, slug: organization.slug }, 'Created organization');
  if (created.user) log.info(ids, 'Created user');
  if (created.membership) log.info({ ...ids, role: membership.role }, 'Created membership');
  countProvisioned(metrics, created, 'sign-in');
  return { user, organization, membership };
}

/** What `checkingInputFirst` needs of a tRPC procedure builder. */
interface Chain {
  input(schema: unknown): Chain;
  output(schema: unknown): Chain;
  meta(meta: unknown): Chain;
  errors(formatter: unknown): Chain;
  experimental_caller(caller: unknown): Chain;
  use(middleware: unknown): Chain;
}

/**
 * `after.reduce(use, before)`, except that every `.input()` chained onto it goes before the
 * middlewares of `after` (behind a sign-in check, so that a caller without a token learns nothing
 * of the input's rules), and every `.use()` after them. tRPC runs middlewares and input parsers in
 * the order they were chained, so `protectedProcedure.input(schema)` would otherwise provision
 * the caller before checking the input: a call with bad input must be refused before any
 * database work (and answer 400, not 503, while the database is down).
 */
function checkingInputFirst(before: Chain, after: readonly unknown[], signInChecked = false): Chain {
  const chained = after.reduce<Chain>((builder, middleware) => builder.use(middleware), before);
  const notHere = (method: string) => () => {
    throw new Error(`protectedProcedure.${method}() is not supported: it would run before the caller is provisioned`);
  };
  return {
    ...chained,
    input: (schema) => checkingInputFirst((signInChecked ? before : before.use(requireSignIn)).input(schema), after, true),
    output: (schema) => checkingInputFirst(before.output(schema), after, signInChecked),
    meta: (meta) => checkingInputFirst(before.meta(meta), after, signInChecked),
    errors: (formatter) => checkingInputFirst(before.errors(formatter), after, signInChecked),
    experimental_caller: (caller) => checkingInputFirst(before.experimental_caller(caller), after, signInChecked),
    use: (middleware) => checkingInputFirst(before, [...after, middleware], signInChecked),
    ...{ concat: notHere('concat'), unstable_concat: notHere('unstable_concat') },
  };
}

// Only for its type, which is tRPC's own: `protectedProcedure` differs in the order things run.
const chainedInOrder = procedure.use(provisionCaller);

/**
 * The builder of every procedure for a signed-in member: `ctx.user`, `ctx.organization` and
 * `ctx.membership` are present for sure. `protectedProcedure.input(schema)` checks the token,
 * then the input, before any database work, wherever `.input()` stands in the chain.
 */
export const protectedProcedure = checkingInputFirst(procedure as unknown as Chain, [
  provisionCaller,
]) as unknown as typeof chainedInOrder;

/**
 * `protectedProcedure` for callers whose token holds `permission` (a key ending in `.*` grants
 * every key under it, see `hasPermission`), or whose role in the organization is `role`: either
 * one lets them in. Anyone else: FORBIDDEN, naming what is required.
 */
export function requiring({ permission, role }: { permission?: string; role?: MemberRole }) {
  const required = [permission && `the permission "${permission}"`, role && `the ${role} role in the organization`];
  const message = `This requires ${required.filter(Boolean).join(' or ')}`;
  return protectedProcedure.use(({ ctx, next }) => {
    if ((permission !== undefined && hasPermission(ctx.auth.permissions, permission)) || ctx.membership.role === role) return next();
    throw new TRPCError({ code: 'FORBIDDEN', message });
  });
}

/** `protectedProcedure`, for admins of the organization only. */
export const adminProcedure = requiring({ role: 'admin' });
