import { TRPCError } from '@trpc/server';
import type { Database } from '../db/database.js';
import { provisionIdentity } from '../db/provisioning.js';
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
}

export type Auth =
  | { status: 'signed-in'; user: User; organization: Organization; membership: OrganizationMember }
  /** `error` is what a protected procedure answers: why this request has no identity. */
  | { status: 'signed-out'; error: TRPCError };

/**
 * Verifies the request's bearer token and provisions its organization, user and membership.
 * Called once per HTTP request, so the calls of one batch share the result.
 */
export async function authenticate(deps: ServerDeps, authorization: string | undefined): Promise<Auth> {
  let verified;
  try {
    const token = parseBearerToken(authorization);
    if (token === null) {
      throw new AccessTokenError('missing', 'Sign-in required: send "Authorization: Bearer <access token>"');
    }
    verified = await deps.verifyAccessToken(token);
  } catch (error) {
    if (!(error instanceof AccessTokenError)) throw error;
    const code = error.reason === 'key_set_unavailable' ? 'SERVICE_UNAVAILABLE' : 'UNAUTHORIZED';
    return { status: 'signed-out', error: new TRPCError({ code, message: error.message, cause: error }) };
  }

  let provisioned;
  try {
    provisioned = await provisionIdentity(deps.db, verified.identity);
  } catch (error) {
    return {
      status: 'signed-out',
      error: new TRPCError({ code: 'INTERNAL_SERVER_ERROR', message: 'Provisioning failed', cause: error }),
    };
  }
  const { organization, user, membership, created } = provisioned;
  const ids = { organizationId: organization.id, userId: user.id };
  if (created.organization) deps.log.info({ ...ids, slug: organization.slug }, 'Created organization');
  if (created.user) deps.log.info(ids, 'Created user');
  if (created.membership) deps.log.info({ ...ids, role: membership.role }, 'Created membership');
  return { status: 'signed-in', user, organization, membership };
}

/** The part of the context that needs no HTTP request: what tests build directly. */
export function createInnerContext(deps: Pick<ServerDeps, 'db' | 'log' | 'cursors'>, auth: Auth) {
  return { db: deps.db, log: deps.log, cursors: deps.cursors, auth };
}

export type Context = ReturnType<typeof createInnerContext>;

/** The outer context, for the HTTP adapter: reads the `Authorization` header. */
export async function createRequestContext(
  deps: ServerDeps,
  headers: { authorization?: string | undefined },
  log: Logger,
): Promise<Context> {
  const requestDeps = { ...deps, log };
  return createInnerContext(requestDeps, await authenticate(requestDeps, headers.authorization));
}
