import type http from 'node:http';
import { errors as joseErrors, jwtVerify } from 'jose';
import getRawBody from 'raw-body';
import { z } from 'zod';
import { type MembershipChange, notifyMembershipChanged } from '../../db/chat-events.js';
import type { Database } from '../../db/database.js';
import { isDatabaseUnavailable } from '../../db/errors.js';
import {
  type IdentityClaims,
  type MembershipState,
  markOrganizationDeletedById,
  markUserDeletedById,
  provisionIdentity,
} from '../../db/provisioning.js';
import { displayText, emailAddress, identifier, pictureUrl } from '../auth/access-token.js';
import type { Logger } from '../logger.js';

export interface FronteggWebhookOptions {
  db: Database;
  /** The secret key set on the webhook in Frontegg's portal (`FRONTEGG_WEBHOOK_SECRET`). */
  secret: string;
  /**
   * Forgets what this instance remembers of the memberships that changed, before the webhook is
   * answered; other instances hear it through PostgreSQL.
   */
  forgetMembers: (change: MembershipChange) => void;
}

/** Frontegg's bodies are a few kilobytes; anything far larger is refused unread. */
export const MAX_WEBHOOK_BODY_BYTES = 64 * 1024;
const MAX_SIGNATURE_HEADER_BYTES = 8 * 1024;
const CLOCK_TOLERANCE_SECONDS = 5;

/** Whether the membership is there (`joined`), gone (`removed`), or only its details changed. */
const membershipEvents = new Map<string, MembershipState>([
  ['frontegg.user.created', 'joined'],
  ['frontegg.user.signedUp', 'joined'],
  ['frontegg.user.invitedToTenant', 'joined'],
  ['frontegg.user.activated', 'joined'],
  ['frontegg.user.updated', 'unchanged'],
  ['frontegg.user.removedFromTenant', 'removed'],
]);

// In Frontegg's user objects a role is `{ id, key, name }`; a plain key is taken too.
const roleKey = z.union([identifier(256), z.object({ key: identifier(256) }).transform((role) => role.key)]);

// Unknown fields are dropped; `metadata` (a JSON string) and the rest are not used.
const webhookBody = z.object({
  eventKey: z.string().max(256),
  eventContext: z.object({ tenantId: identifier(256).nullish(), userId: identifier(256).nullish() }).nullish(),
  user: z
    .object({
      id: identifier(256),
      email: emailAddress.nullish(),
      name: displayText(512).nullish(),
      profilePictureUrl: pictureUrl.nullish(),
      verified: z.boolean().nullish(),
      tenantId: identifier(256).nullish(),
      roles: z.array(roleKey).max(256).nullish(),
    })
    .nullish(),
});

type WebhookBody = z.infer<typeof webhookBody>;

/** What an event asks of the database. */
export type WebhookAction =
  | { kind: 'membership'; claims: IdentityClaims; membership: MembershipState }
  | { kind: 'user.deleted'; userId: string }
  | { kind: 'tenant.deleted'; organizationId: string }
  | { kind: 'ignored' };

/** A delivery that is authentic but cannot be applied: answered 400, and Frontegg shows it failed. */
class UnreadableEventError extends Error {}

/**
 * The action a webhook body asks for; `UnreadableEventError` for one whose event we handle but
 * whose fields are missing or malformed. Every action states what is now true (the person is in
 * the tenant, is not, is deleted), so a repeated or reordered delivery applies the same state again.
 */
export function readWebhookEvent(json: unknown): { eventKey: string; action: WebhookAction } {
  const eventKey = z.object({ eventKey: z.string().max(256) }).safeParse(json);
  if (!eventKey.success) throw new UnreadableEventError('The body has no eventKey');
  const key = eventKey.data.eventKey;
  const membership = membershipEvents.get(key);
  if (!membership && key !== 'frontegg.user.deleted' && key !== 'frontegg.tenant.deleted') {
    return { eventKey: key, action: { kind: 'ignored' } };
  }
  const parsed = webhookBody.safeParse(json);
  if (!parsed.success) {
    throw new UnreadableEventError(`Invalid fields: ${parsed.error.issues.map((issue) => issue.path.join('.')).join(', ')}`);
  }
  const body = parsed.data;
  const userId = userIdOf(body);
  const tenantId = body.eventContext?.tenantId;
  if (key === 'frontegg.tenant.deleted') {
    if (!tenantId) throw new UnreadableEventError('eventContext.tenantId is required');
    return { eventKey: key, action: { kind: 'tenant.deleted', organizationId: tenantId } };
  }
  if (!userId) throw new UnreadableEventError('user.id or eventContext.userId is required');
  if (key === 'frontegg.user.deleted') return { eventKey: key, action: { kind: 'user.deleted', userId } };
  // A removal names the tenant the person left in its context; `user.tenantId` may be another of theirs.
  const tenant = tenantId ?? (membership === 'removed' ? undefined : body.user?.tenantId);
  if (!tenant) throw new UnreadableEventError('eventContext.tenantId is required');
  return { eventKey: key, action: { kind: 'membership', claims: claimsOf(body, userId, tenant), membership: membership! } };
}

function userIdOf({ user, eventContext }: WebhookBody): string | undefined {
  if (user && eventContext?.userId && user.id !== eventContext.userId) {
    throw new UnreadableEventError('user.id and eventContext.userId differ');
  }
  return eventContext?.userId ?? user?.id;
}

/**
 * The claims provisioning writes, as the event's user object has them (absent: kept). The roles
 * are taken only for the tenant the user object is of (*inferred*: Frontegg's docs do not say
 * which tenant a user's `roles` describe when a user is in several).
 */
function claimsOf({ user }: WebhookBody, userId: string, tenantId: string): IdentityClaims {
  if (!user) return { userId, tenantId };
  const rolesOfThisTenant = !user.tenantId || user.tenantId === tenantId;
  return {
    userId,
    tenantId,
    email: user.email,
    name: user.name,
    avatarUrl: user.profilePictureUrl,
    emailVerified: user.verified ?? undefined,
    roles: rolesOfThisTenant ? (user.roles ?? undefined) : undefined,
    // Frontegg sends no time of the change: it is taken as now, newer than any token issued before.
    asOf: new Date(),
  };
}

/**
 * `POST /webhooks/frontegg`: checks the delivery (the `x-webhook-secret` header is a JWT signed
 * with HS256 with the webhook's secret; an `exp` in it is honoured), applies the event in one
 * transaction, tells every instance which memberships changed, and only then answers 200. Any
 * doubt about the delivery answers 401 and changes nothing; Frontegg counts any 4xx as failed.
 */
export function createFronteggWebhookHandler(options: FronteggWebhookOptions) {
  const key = new TextEncoder().encode(options.secret);

  return async function handleFronteggWebhook(req: http.IncomingMessage, res: http.ServerResponse, log: Logger) {
    if (req.method !== 'POST') return answer(res, 405, { error: 'Use POST' }, { allow: 'POST' });
    const refuse = (reason: string) => {
      log.warn({ reason }, 'Frontegg webhook refused');
      // The body may be unread: the connection is not reused.
      answer(res, 401, { error: 'The webhook could not be authenticated' }, { connection: 'close' });
    };

    const header = req.headers['x-webhook-secret'];
    if (typeof header !== 'string' || header === '') return refuse('missing_signature');
    if (header.length > MAX_SIGNATURE_HEADER_BYTES) return refuse('invalid_signature');
    try {
      await jwtVerify(header, key, { algorithms: ['HS256'], clockTolerance: CLOCK_TOLERANCE_SECONDS });
    } catch (error) {
      return refuse(error instanceof joseErrors.JWTExpired ? 'expired_signature' : 'invalid_signature');
    }

    let json: unknown;
    try {
      const text = await getRawBody(req, { length: req.headers['content-length'], limit: MAX_WEBHOOK_BODY_BYTES, encoding: 'utf8' });
      json = JSON.parse(text);
    } catch (error) {
      return refuse((error as { type?: unknown }).type === 'entity.too.large' ? 'body_too_large' : 'body_not_json');
    }

    let event: ReturnType<typeof readWebhookEvent>;
    try {
      event = readWebhookEvent(json);
    } catch (error) {
      if (!(error instanceof UnreadableEventError)) throw error;
      log.warn({ reason: error.message }, 'Frontegg webhook not applied: the event could not be read');
      return answer(res, 400, { error: error.message });
    }
    const { eventKey, action } = event;
    try {
      const outcome = await apply(options.db, action, log.child({ eventKey }));
      if (outcome) {
        options.forgetMembers(outcome);
        // Should this fail, the 503 makes Frontegg deliver again, and a repeat notifies again.
        await notifyMembershipChanged(options.db, outcome);
      }
      answer(res, 200, { status: outcome ? 'applied' : 'ignored' });
    } catch (error) {
      const unavailable = isDatabaseUnavailable(error);
      log.error({ err: error, eventKey }, 'Frontegg webhook not applied');
      answer(res, unavailable ? 503 : 500, { error: unavailable ? 'Temporarily unavailable; deliver again later' : 'Internal server error' });
    }
  };
}

/** Applies the action; returns whose memberships it concerns, or `undefined` for an ignored event. */
async function apply(db: Database, action: WebhookAction, log: Logger): Promise<MembershipChange | undefined> {
  switch (action.kind) {
    case 'ignored':
      log.info('Frontegg webhook ignored: not an event this service acts on');
      return undefined;
    case 'membership': {
      const { claims, membership } = action;
      const { user, organization, membership: row, created } = await provisionIdentity(db, claims, { kind: 'webhook', membership });
      const ids = { userId: user.id, organizationId: organization.id };
      log.info(
        { ...ids, membership, role: row.role, removed: row.fronteggRemovedAt !== null, operatorDeactivated: !row.isActive, created },
        'Frontegg webhook applied',
      );
      return ids;
    }
    case 'user.deleted': {
      const removed = await markUserDeletedById(db, { userId: action.userId });
      log.info({ userId: action.userId, membershipsRemoved: removed }, 'Frontegg webhook applied: user deleted, profile and chats kept');
      return { userId: action.userId };
    }
    case 'tenant.deleted': {
      const removed = await markOrganizationDeletedById(db, { organizationId: action.organizationId });
      log.info({ organizationId: action.organizationId, membershipsRemoved: removed }, 'Frontegg webhook applied: tenant deleted, chats kept');
      return { organizationId: action.organizationId };
    }
  }
}

function answer(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body));
}
