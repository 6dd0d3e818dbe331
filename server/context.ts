import { TRPCError } from '@trpc/server';
import type { Database } from '../db/database.js';
import { type IdentityClaims, provisionIdentity } from '../db/provisioning.js';
import type { Organization, OrganizationMember, User } from '../db/schema.js';
import { AccessTokenError, type AccessTokenVerifier, parseBearerToken } from './auth/access-token.js';
import type { CursorCodec } from './cursor.js';
import type { Logger } from './logger.js';

/** What the server is built from; tests build the same with a real database and key set. */
export interface ServerDeps {
  db: Database;
  verifyAccessToken: AccessTokenVerifier;
  log: Logger;
  /** Signs and checks paging cursors with the secret the instances share. */
  cursors: CursorCodec;
  /** A procedure that has not answered by then answers 503 (default 15 s). */
  procedureTimeoutMs?: number;
}

const DEFAULT_PROCEDURE_TIMEOUT_MS = 15_000;

export type Auth =
  | { status: 'verified'; identity: IdentityClaims }
  /** `error` is what a procedure that needs a caller answers: why this request has no identity. */
  | { status: 'signed-out'; error: TRPCError };

/** The caller's rows, as `protectedProcedure` hands them to procedures. */
export interface Member {
  user: User;
  organization: Organization;
  membership: OrganizationMember;
}

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
    return { status: 'verified', identity: (await deps.verifyAccessToken(token)).identity };
  } catch (error) {
    if (!(error instanceof AccessTokenError)) throw error;
    const code = error.reason === 'key_set_unavailable' ? 'SERVICE_UNAVAILABLE' : 'UNAUTHORIZED';
    return { status: 'signed-out', error: new TRPCError({ code, message: error.message, cause: error }) };
  }
}

/** The part of the context that needs no HTTP request: what tests build directly. */
export function createInnerContext(
  deps: Pick<ServerDeps, 'db' | 'log' | 'cursors' | 'procedureTimeoutMs'>,
  auth: Auth,
) {
  let member: Promise<Member> | undefined;
  return {
    db: deps.db,
    log: deps.log,
    cursors: deps.cursors,
    procedureTimeoutMs: deps.procedureTimeoutMs ?? DEFAULT_PROCEDURE_TIMEOUT_MS,
    auth,
    /**
     * Creates or updates the caller's organization, user and membership, once per context: the
     * calls of one HTTP batch share a context, so a batch is provisioned once.
     */
    provisionMember(): Promise<Member> {
      if (auth.status !== 'verified') return Promise.reject(auth.error);
      member ??= provisionMember(deps, auth.identity);
      return member;
    },
  };
}

export type Context = ReturnType<typeof createInnerContext>;

async function provisionMember(deps: Pick<ServerDeps, 'db' | 'log'>, identity: IdentityClaims): Promise<Member> {
  const { organization, user, membership, created } = await provisionIdentity(deps.db, identity);
  const ids = { organizationId: organization.id, userId: user.id };
  if (created.organization) deps.log.info({ ...ids, slug: organization.slug }, 'Created organization');
  if (created.user) deps.log.info(ids, 'Created user');
  if (created.membership) deps.log.info({ ...ids, role: membership.role }, 'Created membership');
  return { user, organization, membership };
}

/** The outer context, for the HTTP adapter: reads the `Authorization` header. */
export async function createRequestContext(
  deps: ServerDeps,
  headers: { authorization?: string | undefined },
  log: Logger,
): Promise<Context> {
  return createInnerContext({ ...deps, log }, await authenticate(deps, headers.authorization));
}
