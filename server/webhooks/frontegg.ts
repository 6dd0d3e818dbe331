import type http from 'node:http';
import { errors as joseErrors, jwtVerify } from 'jose';
import getRawBody from 'raw-body';
import { z } from 'zod';
import type { MembershipChange } from '../../db/chat-events.js';
import type { Database } from '../../db/database.js';
import { isDatabaseUnavailable } from '../../db/errors.js';
import { getMembershipByIds } from '../../db/members.js';
import {
  type IdentityClaims,
  type MembershipState,
  markOrganizationDeletedById,
  markUserDeletedById,
  provisionIdentity,
  restoreOrganizationById,
} from '../../db/provisioning.js';
import { displayText, emailAddress, identifier, pictureUrl } from '../auth/access-token.js';
import type { Logger } from '../logger.js';
import { type Metrics, countProvisioned } from '../metrics.js';

export interface FronteggWebhookOptions {
  db: Database;
  /** The secret key set on the webhook in Frontegg's portal (`FRONTEGG_WEBHOOK_SECRET`). */
  secret: string;
  /**
   * Forgets what this instance remembers of the memberships that changed, before the webhook is
   * answered; other instances hear it through PostgreSQL.
   */
  forgetMembers: (change: MembershipChange) => void;
  metrics: Metrics;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

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
  | { kind: 'tenant.deleted' | 'tenant.created'; organizationId: string }
  | { kind: 'ignored' };

const tenantEvents = new Map<string, 'tenant.deleted' | 'tenant.created'>([
  ['frontegg.tenant.deleted', 'tenant.deleted'],
  ['frontegg.tenant.created', 'tenant.created'],
]);

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
  const tenantEvent = tenantEvents.get(key);
  if (!membership && !tenantEvent && key !== 'frontegg.user.deleted') return { eventKey: key, action: { kind: 'ignored' } };
  const parsed = webhookBody.safeParse(json);
  if (!parsed.success) {
    throw new UnreadableEventError(`Invalid fields: ${parsed.error.issues.map((issue) => issue.path.join('.')).join(', ')}`);
  }
  const body = parsed.data;
  const userId = userIdOf(body);
  const tenantId = body.eventContext?.tenantId;
  if (tenantEvent) {
    if (!tenantId) throw new UnreadableEventError('eventContext.tenantId is required');
    return { eventKey: key, action: { kind: tenantEvent, organizationId: tenantId } };
  }
  if (!userId) throw new UnreadableEventError('user.id or eventContext.userId is required');
  if (key === 'frontegg.user.deleted') return { eventKey: key, action: { kind: 'user.deleted', userId } };
  // A removal names the tenant the person left in its context; `user.tenantId` may be another of theirs.
  const tenant = tenantId ?? (membership === 'removed' ? undefined : body.user?.tenantId);
  if (!tenant) throw new UnreadableEventError('eventContext.tenantId is required');
  const claims = claimsOf(body, userId, tenant, membership === 'unchanged');
  return { eventKey: key, action: { kind: 'membership', claims, membership: membership! } };
}

/**
 * Whom the event is about: the user object's id, else `eventContext.userId` (the same user in
 * Frontegg's sample; the docs only call it optional).
 */
function userIdOf({ user, eventContext }: WebhookBody): string | undefined {
  return user?.id ?? eventContext?.userId ?? undefined;
}

/**
 * The claims provisioning writes, as the event's user object has them (absent: kept). The roles
 * are taken only when the user object is of the event's tenant (*inferred*: Frontegg's docs do not
 * say which tenant a user's `roles` describe when a user is in several).
 *
 * Only `frontegg.user.updated` says what changed: its claims count as of its arrival (plus the
 * clock skew tokens are allowed), newer than any token issued before. The other events' user
 * objects are snapshots of their own moment, often with no roles yet (a sign-up, an invitation), so
 * they count as of no time: they fill in a new row, and never overwrite what a token or an update wrote.
 */
function claimsOf({ user }: WebhookBody, userId: string, tenantId: string, changed: boolean): IdentityClaims {
  if (!user) return { userId, tenantId };
  // A snapshot without roles (a sign-up, an activation) says nothing of them: an invitation's stand.
  const roles = user.tenantId === tenantId && (changed || user.roles?.length) ? (user.roles ?? undefined) : undefined;
  return {
    userId,
    tenantId,
    email: user.email,
    name: user.name,
    avatarUrl: user.profilePictureUrl,
    emailVerified: user.verified ?? undefined,
    roles,
    asOf: changed ? new Date(Date.now() + CLOCK_TOLERANCE_SECONDS * 1000) : undefined,
  };
}

/**
 * `POST /webhooks/frontegg`: checks the delivery (the `x-webhook-secret` header is a JWT signed
 * with HS256 with the webhook's secret; an `exp` in it is honoured), applies the event in one
 * transaction that also tells every instance which memberships changed, forgets them here, and
 * only then answers 200. Any
 * doubt about the delivery answers 401 and changes nothing; Frontegg counts any 4xx as failed.
 */
export function createFronteggWebhookHandler(options: FronteggWebhookOptions) {
  const key = new TextEncoder().encode(options.secret);
  const { metrics } = options;

  return async function handleFronteggWebhook(req: http.IncomingMessage, res: http.ServerResponse, log: Logger) {
    if (req.method !== 'POST') return answer(res, 405, { error: 'Use POST' }, { allow: 'POST' });
    const refuse = (reason: string) => {
      log.warn({ reason }, 'Frontegg webhook refused');
      metrics.webhooks.inc({ outcome: 'refused' });
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
      const body = await getRawBody(req, { length: req.headers['content-length'], limit: MAX_WEBHOOK_BODY_BYTES });
      // Strict: invalid UTF-8 would otherwise become U+FFFD, and two ids differing there one id.
      json = JSON.parse(utf8.decode(body));
    } catch (error) {
      return refuse((error as { type?: unknown }).type === 'entity.too.large' ? 'body_too_large' : 'body_not_json');
    }

    let event: ReturnType<typeof readWebhookEvent>;
    try {
      event = readWebhookEvent(json);
    } catch (error) {
      if (!(error instanceof UnreadableEventError)) throw error;
      log.warn({ reason: error.message }, 'Frontegg webhook not applied: the event could not be read');
      metrics.webhooks.inc({ outcome: 'invalid' });
      return answer(res, 400, { error: error.message });
    }
    const { eventKey, action } = event;
    try {
      // Other instances hear of the change from its transaction; this one forgets before answering.
      const outcome = await apply(options.db, action, log.child({ eventKey }), metrics);
      if (outcome) options.forgetMembers(outcome);
      const status = outcome ? 'applied' : 'ignored';
      metrics.webhooks.inc({ outcome: status });
      answer(res, 200, { status });
    } catch (error) {
      const unavailable = isDatabaseUnavailable(error);
      log.error({ err: error, eventKey }, 'Frontegg webhook not applied');
      metrics.webhooks.inc({ outcome: unavailable ? 'unavailable' : 'failed' });
      if (unavailable) metrics.databaseUnavailable.inc();
      answer(res, unavailable ? 503 : 500, { error: unavailable ? 'Temporarily unavailable; deliver again later' : 'Internal server error' });
    }
  };
}

/** Applies the action; returns whose memberships it concerns, or `undefined` for an ignored event. */
async function apply(db: Database, action: WebhookAction, log: Logger, metrics: Metrics): Promise<MembershipChange | undefined> {
  switch (action.kind) {
    case 'ignored':
      log.info('Frontegg webhook ignored: not an event this service acts on');
      return undefined;
    case 'membership': {
      const { claims, membership } = action;
      // An update syncs a membership this service has; it is not one of the events that add people.
      if (membership === 'unchanged' && !(await getMembershipByIds(db, { userId: claims.userId, organizationId: claims.tenantId }))) {
        log.info({ userId: claims.userId, organizationId: claims.tenantId }, 'Frontegg webhook ignored: no such membership here');
        return undefined;
      }
      const { user, organization, membership: row, created } = await provisionIdentity(db, claims, { kind: 'webhook', membership });
      const ids = { userId: user.id, organizationId: organization.id };
      countProvisioned(metrics, created, 'webhook');
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
    case 'tenant.created': {
      const restored = await restoreOrganizationById(db, { organizationId: action.organizationId });
      log.info({ organizationId: action.organizationId, restored }, 'Frontegg webhook applied: tenant created');
      return { organizationId: action.organizationId };
    }
  }
}

function answer(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body));
}
