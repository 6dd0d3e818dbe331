import { TRPCError } from '@trpc/server';
import type { Database } from '../db/database.js';
import { type IdentityClaims, type ProvisionedIdentity, provisionIdentityThen } from '../db/provisioning.js';
import type { Organization, OrganizationMember, User } from '../db/schema.js';
import { AccessTokenError, type AccessTokenVerifier, parseBearerToken } from './auth/access-token.js';
import type { CursorCodec } from './cursor.js';
import type { Logger } from './logger.js';
import type { MemberCache } from './member-cache.js';

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
  deps: Pick<ServerDeps, 'db' | 'log' | 'cursors' | 'procedureTimeoutMs' | 'members'>,
  auth: Auth,
) {
  return {
    db: deps.db,
    log: deps.log,
    cursors: deps.cursors,
    procedureTimeoutMs: deps.procedureTimeoutMs ?? DEFAULT_PROCEDURE_TIMEOUT_MS,
    auth,
    /**
     * Runs `work` as the caller. When they were provisioned recently from the same claims, it
     * runs at once on `db` with the remembered rows: no provisioning statement at all. Otherwise
     * it runs inside the transaction that provisions them, on that transaction, so a first
     * request is one transaction. That commits when `succeeded(result)`, and the rows are
     * remembered; else it rolls back and `result` is returned all the same.
     */
    withMember<T>(work: (member: Member, db: Database) => Promise<T>, succeeded: (result: T) => boolean): Promise<T> {
      if (auth.status !== 'verified') return Promise.reject(auth.error);
      return withMember(deps, auth.identity, work, succeeded);
    },
  };
}

export type Context = ReturnType<typeof createInnerContext>;

/** Carries a result out of a transaction that it rolls back. */
class RolledBack {
  constructor(readonly result: unknown) {}
}

async function withMember<T>(
  deps: Pick<ServerDeps, 'db' | 'log' | 'members'>,
  identity: IdentityClaims,
  work: (member: Member, db: Database) => Promise<T>,
  succeeded: (result: T) => boolean,
): Promise<T> {
  const remembered = deps.members.get(identity);
  if (remembered) return work(remembered, deps.db);
  // Another call of this person (the rest of a batch, say) is provisioning: wait for it rather
  // than queue behind its row locks, and provision here only if it rolled back.
  const underWay = deps.members.underWay(identity);
  const provisionedElsewhere = underWay && (await underWay);
  if (provisionedElsewhere) return work(provisionedElsewhere, deps.db);

  const end = deps.members.begin(identity);
  let committed: Member | undefined;
  try {
    const { provisioned, result } = await provisionIdentityThen(deps.db, identity, async (tx, provisioned) => {
      const result = await work(memberOf(provisioned), tx);
      if (!succeeded(result)) throw new RolledBack(result);
      return result;
    });
    committed = memberOf(provisioned);
    logCreated(deps.log, provisioned);
    return result;
  } catch (error) {
    if (error instanceof RolledBack) return error.result as T;
    throw error;
  } finally {
    end?.(committed);
  }
}

const memberOf = ({ user, organization, membership }: ProvisionedIdentity): Member => ({ user, organization, membership });

function logCreated(log: Logger, { organization, user, membership, created }: ProvisionedIdentity) {
  const ids = { organizationId: organization.id, userId: user.id };
  if (created.organization) log.info({ ...ids, slug: organization.slug }, 'Created organization');
  if (created.user) log.info(ids, 'Created user');
  if (created.membership) log.info({ ...ids, role: membership.role }, 'Created membership');
}

/** The outer context, for the HTTP adapter: reads the `Authorization` header. */
export async function createRequestContext(
  deps: ServerDeps,
  headers: { authorization?: string | undefined },
  log: Logger,
): Promise<Context> {
  return createInnerContext({ ...deps, log }, await authenticate(deps, headers.authorization));
}
