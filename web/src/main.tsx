import { MutationCache, QueryCache, QueryClient, QueryClientProvider } from '@tanstack/react-query';
import { createTRPCClient } from '@trpc/client';
import { type ReactNode, StrictMode, Suspense, lazy, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { type AppRouter, createApiLinks } from '../../client/index.js';
import { API_URL, TRPCProvider, codeOf } from './api.js';
import { App } from './App.js';
import { LocalSignIn, useAuth } from './auth.js';

const FronteggSignIn = lazy(() => import('./frontegg-sign-in.js'));
const frontegg = { baseUrl: import.meta.env.VITE_FRONTEGG_BASE_URL, clientId: import.meta.env.VITE_FRONTEGG_CLIENT_ID };

/** Frontegg when configured; else "sign in as" in development, and nothing in a production build. */
function SignIn({ children }: { children: ReactNode }) {
  if (frontegg.baseUrl && frontegg.clientId) {
    return (
      <Suspense fallback={<p className="notice">Loading…</p>}>
        <FronteggSignIn baseUrl={frontegg.baseUrl} clientId={frontegg.clientId}>
          {children}
        </FronteggSignIn>
      </Suspense>
    );
  }
  if (__LOCAL_SIGN_IN__) return <LocalSignIn>{children}</LocalSignIn>;
  return <p className="notice">This page was built without VITE_FRONTEGG_BASE_URL and VITE_FRONTEGG_CLIENT_ID: there is no way to sign in.</p>;
}

/** The typed client and its query cache, for the signed-in person. */
function Api({ children }: { children: ReactNode }) {
  const auth = useAuth();
  const [queryClient] = useState(
    () =>
      new QueryClient({
        // Any answer tells the sign-in its token is good (see `renewAfterRefusal`).
        queryCache: new QueryCache({ onSuccess: () => auth.accepted() }),
        mutationCache: new MutationCache({ onSuccess: () => auth.accepted() }),
        defaultOptions: {
          queries: {
            // 401: once more with a new token (the call waits for it); 503 or no answer: a few
            // more times; anything else is shown.
            retry: (failures, error) => {
              const code = codeOf(error);
              if (code === 'UNAUTHORIZED') return failures === 0 && auth.renewAfterRefusal();
              return (code === 'SERVICE_UNAVAILABLE' || code === undefined) && failures < 3;
            },
            retryDelay: (failures, error) => (codeOf(error) === 'UNAUTHORIZED' ? 0 : Math.min(500 * 2 ** failures, 5_000)),
            refetchOnWindowFocus: false,
          },
          mutations: {
            retry: (failures, error) => codeOf(error) === 'UNAUTHORIZED' && failures === 0 && auth.renewAfterRefusal(),
            retryDelay: 0,
          },
        },
      }),
  );
  const [trpcClient] = useState(() => createTRPCClient<AppRouter>({ links: createApiLinks({ url: API_URL, getToken: () => auth.getToken() }) }));
  return (
    <QueryClientProvider client={queryClient}>
      <TRPCProvider trpcClient={trpcClient} queryClient={queryClient}>
        {children}
      </TRPCProvider>
    </QueryClientProvider>
  );
}

/** The API's client and cache belong to one person: another sign-in gets new ones. */
function SignedIn() {
  const { who } = useAuth();
  return (
    <Api key={who}>
      <App />
    </Api>
  );
}

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <SignIn>
      <SignedIn />
    </SignIn>
  </StrictMode>,
);
