import { randomUUID } from 'node:crypto';
import { SignJWT } from 'jose';

/** The secret set on the webhook in Frontegg's portal, as the server is configured with it. */
export const WEBHOOK_SECRET = 'a-long-random-webhook-secret-for-tests';

/**
 * The `x-webhook-secret` header Frontegg sends: a JWT signed with the webhook's secret (HS256),
 * with `claims` (none by default: Frontegg documents none).
 */
export function signWebhookHeader({ secret = WEBHOOK_SECRET, claims = {} }: { secret?: string; claims?: Record<string, unknown> } = {}) {
  return new SignJWT(claims).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).sign(new TextEncoder().encode(secret));
}

/** A Frontegg user object as webhooks carry it (shared/FRONTEGG.md), with `overrides`. */
export function fronteggUser(overrides: Record<string, unknown> = {}) {
  const tenantId = (overrides.tenantId as string | undefined) ?? randomUUID();
  return {
    id: randomUUID(),
    email: 'cheli@example.com',
    verified: null,
    name: 'cheli',
    phoneNumber: null,
    profilePictureUrl: 'https://www.gravatar.com/avatar/cheli',
    provider: 'local',
    mfaEnrolled: false,
    metadata: '{"department":"R&D"}',
    tenantIds: [tenantId],
    tenantId,
    roles: [],
    permissions: [],
    createdAt: '2021-05-02T11:25:22.000Z',
    lastLogin: null,
    isLocked: false,
    activatedForTenant: true,
    ...overrides,
  };
}

/** A webhook body: `eventKey`, the user object, and the tenant and user in `eventContext`. */
export function webhookBody(eventKey: string, user: { id: string; tenantId: string }, context: { tenantId?: string } = {}) {
  return { eventKey, eventContext: { tenantId: context.tenantId ?? user.tenantId, userId: user.id }, user };
}

/** POSTs `body` (JSON unless a string) to the server's `/webhooks/frontegg` as Frontegg does. */
export async function deliverWebhook(
  baseUrl: string,
  body: unknown,
  { header, method = 'POST' }: { header?: string | null; method?: string } = {},
) {
  const signature = header === undefined ? await signWebhookHeader() : header;
  const response = await fetch(`${baseUrl}/webhooks/frontegg`, {
    method,
    headers: { 'content-type': 'application/json', ...(signature === null ? {} : { 'x-webhook-secret': signature }) },
    body: method === 'GET' ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}
