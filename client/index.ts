import { createTRPCClient, httpBatchLink } from '@trpc/client';
import type { inferRouterInputs, inferRouterOutputs } from '@trpc/server';
import superjson from 'superjson';
import { MAX_BATCH_SIZE } from './limits.js';
// Only the type: a frontend bundle never pulls in server code.
import type { AppRouter } from '../server/root.js';

export type { AppRouter };
export { MAX_BATCH_SIZE, MAX_BODY_BYTES } from './limits.js';
export type RouterInputs = inferRouterInputs<AppRouter>;
export type RouterOutputs = inferRouterOutputs<AppRouter>;

export interface ApiClientOptions {
  /** The tRPC endpoint, e.g. `http://127.0.0.1:3000/trpc`. */
  url: string;
  /**
   * Returns the current Frontegg access token (or null when signed out). Called before every
   * request, so a refreshed token is used as soon as the frontend has it.
   */
  getToken: () => Promise<string | null | undefined> | string | null | undefined;
  /** A custom fetch (server-side callers, tests). */
  fetch?: typeof fetch;
}

export function createApiClient({ url, getToken, fetch }: ApiClientOptions) {
  return createTRPCClient<AppRouter>({
    links: [
      httpBatchLink({
        url,
        transformer: superjson,
        // The server refuses longer batches; more calls at once go out as several requests.
        maxItems: MAX_BATCH_SIZE,
        fetch,
        async headers() {
          const token = await getToken();
          return token ? { authorization: `Bearer ${token}` } : {};
        },
      }),
    ],
  });
}

export type ApiClient = ReturnType<typeof createApiClient>;
