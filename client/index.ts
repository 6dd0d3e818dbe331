import {
  type Operation,
  type TRPCClientError,
  createTRPCClient,
  httpBatchLink,
  httpSubscriptionLink,
  retryLink,
  splitLink,
} from '@trpc/client';
import type { inferRouterInputs, inferRouterOutputs } from '@trpc/server';
import { EventSource } from 'eventsource';
import superjson from 'superjson';
import { MAX_BATCH_SIZE } from './limits.js';
// Only the type: a frontend bundle never pulls in server code.
import type { AppRouter } from '../server/root.js';

export type { AppRouter };
export { MAX_BATCH_SIZE, MAX_BODY_BYTES } from './limits.js';
export type RouterInputs = inferRouterInputs<AppRouter>;
export type RouterOutputs = inferRouterOutputs<AppRouter>;
/** What `chat.events` delivers (`event.type` tells which). */
export type { ChatEvent } from '../db/chat-events.js';

export interface ApiClientOptions {
  /** The tRPC endpoint, e.g. `http://127.0.0.1:3000/trpc`. */
  url: string;
  /**
   * Returns the current Frontegg access token (or null when signed out). Called before every
   * request, and on every connect and reconnect of a subscription, so a refreshed token is used
   * as soon as the frontend has it.
   */
  getToken: () => Promise<string | null | undefined> | string | null | undefined;
  /** A custom fetch (server-side callers, tests). */
  fetch?: typeof fetch;
}

/**
 * The typed client. Queries and mutations go out in HTTP batches; subscriptions (`chat.events`)
 * as Server-Sent Events, through an EventSource that sends the `Authorization` header (the
 * `eventsource` package, in Node and in browsers), never a token in the URL.
 */
export function createApiClient(options: ApiClientOptions) {
  return createTRPCClient<AppRouter>({ links: createApiLinks(options) });
}

export type ApiClient = ReturnType<typeof createApiClient>;

/**
 * The links of `createApiClient`, for a client made elsewhere: React's
 * `createTRPCClient<AppRouter>({ links: createApiLinks({ url, getToken }) })` with
 * `@trpc/tanstack-react-query`.
 */
export function createApiLinks({ url, getToken, fetch: customFetch }: ApiClientOptions) {
  async function authorization(): Promise<Record<string, string>> {
    const token = await getToken();
    return token ? { authorization: `Bearer ${token}` } : {};
  }
  return [
    splitLink<AppRouter>({
      condition: (op) => op.type === 'subscription',
      true: [
        retryLink(resubscribing()),
        httpSubscriptionLink({
          url,
          transformer: superjson,
          EventSource,
          eventSourceOptions: () => ({
            // Called for every connection the EventSource opens, its own reconnections included.
            fetch: async (input, init) =>
              (customFetch ?? globalThis.fetch)(input, { ...init, headers: { ...init.headers, ...(await authorization()) } }),
          }),
        }),
      ],
      false: httpBatchLink({
        url,
        transformer: superjson,
        // The server refuses longer batches; more calls at once go out as several requests.
        maxItems: MAX_BATCH_SIZE,
        fetch: customFetch,
        headers: authorization,
      }),
    }),
  ];
}

/** Failures of one stream this close together count as one run of failures. */
const FAILURES_APART_MS = 10_000;
/** The waits before the retries of a run after a token expiry: at once, then 1 s, then 3 s; then the error is the subscriber's. */
const EXPIRED_RETRY_DELAYS_MS = [0, 1_000, 3_000];
/** After a connection that got no answer from the API: 1 s, doubling up to this, for as long as it lasts. */
const UNREACHABLE_MAX_DELAY_MS = 30_000;

/**
 * Which ended subscriptions `retryLink` opens again, with the last event id they delivered (so
 * nothing is missed):
 * - one ended by its token's expiry, with the token `getToken` gives now; three times in a row at
 *   most, as a `getToken` that goes on giving an expired token would fail forever;
 * - one whose connection got no answer from the API (a proxy's 502 page during a deploy), for as
 *   long as that lasts, waiting longer each time.
 *
 * A dropped connection, or a server restarting (503), is reconnected by the EventSource itself.
 * Other refusals (FORBIDDEN, BAD_REQUEST, TOO_MANY_REQUESTS) reach the subscriber's `onError`.
 */
function resubscribing() {
  /** Each stream's run of failures: how many, and when its last retry was due. */
  const failures = new WeakMap<Operation['context'], { count: number; retriedAt: number }>();
  let delayMs = 0;
  return {
    retry({ op, error }: { op: Operation; error: TRPCClientError<AppRouter> }) {
      const expired = error.data?.code === 'UNAUTHORIZED' && error.data.authReason === 'expired';
      const unreachable = error.data === undefined;
      if (!expired && !unreachable) return false;
      const now = Date.now();
      const previous = failures.get(op.context);
      const count = previous && now - previous.retriedAt < FAILURES_APART_MS ? previous.count + 1 : 1;
      delayMs = expired ? (EXPIRED_RETRY_DELAYS_MS[count - 1] ?? 0) : Math.min(1_000 * 2 ** (count - 1), UNREACHABLE_MAX_DELAY_MS);
      failures.set(op.context, { count, retriedAt: now + delayMs });
      return unreachable || count <= EXPIRED_RETRY_DELAYS_MS.length;
    },
    // Asked right after `retry`, for the same stream.
    retryDelayMs: () => delayMs,
  };
}
