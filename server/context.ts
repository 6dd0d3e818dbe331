import { TRPCError } from '@trpc/server';
import type { Database } from '../db/database.js';
import { AccessTokenError, type AccessTokenVerifier, type VerifiedAccessToken, parseBearerToken } from './auth/access-token.js';
import type { ChatEventHub } from './chat-events.js';
import type { CursorCodec } from './cursor.js';
import type { Logger } from './logger.js';
import type { InFlightLimit } from './in-flight-limit.js';
import type { MemberCache } from './member-cache.js';
import type { Metrics } from './metrics.js';
import type { ReplyRunner } from './replies.js';
import type { WriteLimit } from './write-limit.js';

/** What the server is built from; tests build the same with a real database and key set. */
export interface ServerDeps {
  db: Database;
  verifyAccessToken: AccessTokenVerifier;
  log: Logger;
  /** Signs and checks paging cursors with the secret the instances share. */
  cursors: CursorCodec;
  /** A procedure that has not answered by then answers 503 (default 15 s). */
  procedureTimeoutMs?: number;
  /** Who was provisioned recently, so that warm requests skip provisioning. */
  members: MemberCache;
  /** Each person's heavy calls in progress (procedures with `meta({ heavy: true })`). */
  heavyCalls: InFlightLimit;
  /** Each person's writes a minute (procedures with `meta({ write: true })`). */
  writes: WriteLimit;
  /** Counted on every call; served on `METRICS_PORT` when set. */
  metrics: Metrics;
  /** Live chat events for `chat.events`. */
  chatEvents: ChatEventHub;
  /** Writes the assistant's replies; none with `ASSISTANT_REPLIES=off`. */
  replies: ReplyRunner | undefined;
}

const DEFAULT_PROCEDURE_TIMEOUT_MS = 15_000;

export type Auth =
  /**
   * The verified token: `identity` is what provisioning writes; `roles`, `permissions` and
   * `tenantIds` are the token's own (see `VerifiedAccessToken`); `expiresAt` its `exp`, when a
   * subscription it opened ends.
   */
  | ({ status: 'verified' } & VerifiedAccessToken)
  /** `error` is what a procedure that needs a caller answers: why this request has no identity. */
  | { status: 'signed-out'; error: TRPCError };

/**
 * Verifies the request's bearer token. No database work: provisioning waits until a procedure
 * that needs the caller has checked its input.
 */
export async function authenticate(
  deps: Pick<ServerDeps, 'verifyAccessToken'>,
  authorization: string | undefined,
): Promise<Auth> {
  try {
    const token = parseBearerToken(authorization);
    if (token === null) {
      throw new AccessTokenError('missing', 'Sign-in required: send "Authorization: Bearer <access token>"');
    }
    return { status: 'verified', ...(await deps.verifyAccessToken(token)) };
  } catch (error) {
    if (!(error instanceof AccessTokenError)) throw error;
    const code = error.reason === 'key_set_unavailable' ? 'SERVICE_UNAVAILABLE' : 'UNAUTHORIZED';
    return { status: 'signed-out', error: new TRPCError({ code, message: error.message, cause: error }) };
  }
}

/**
 * The part of the context that needs no HTTP request: what tests and scripts build directly.
 * Data and services only; `protectedProcedure` adds the caller's rows.
 */
export function createInnerContext(
  deps: Pick<ServerDeps, 'db' | 'log' | 'cursors' | 'procedureTimeoutMs' | 'members' | 'heavyCalls' | 'writes' | 'metrics' | 'chatEvents' | 'replies'>,
  auth: Auth,
  /** Settles when the HTTP response has been sent or its connection closed; none in-process. */
  answered?: Promise<void>,
) {
  return {
    db: deps.db,
    log: deps.log,
    cursors: deps.cursors,
    members: deps.members,
    heavyCalls: deps.heavyCalls,
    writes: deps.writes,
    metrics: deps.metrics,
    chatEvents: deps.chatEvents,
    replies: deps.replies,
    procedureTimeoutMs: deps.procedureTimeoutMs ?? DEFAULT_PROCEDURE_TIMEOUT_MS,
    auth,
    answered,
  };
}

export type Context = ReturnType<typeof createInnerContext>;

/** The outer context, for the HTTP adapter: reads the `Authorization` header. */
export async function createRequestContext(
  deps: ServerDeps,
  req: { headers: { authorization?: string | undefined } },
  res: { once(event: 'close', listener: () => void): unknown },
  log: Logger,
): Promise<Context> {
  const answered = new Promise<void>((resolve) => res.once('close', resolve));
  return createInnerContext({ ...deps, log }, await authenticate(deps, req.headers.authorization), answered);
}
