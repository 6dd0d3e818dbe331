import { ContextHolder, FronteggProvider, useAuth as useFrontegg, useAuthActions, useLoginWithRedirect } from '@frontegg/react';
import { type ReactNode, useEffect, useMemo } from 'react';
import { type Auth, AuthProvider } from './auth.js';

/** Sign-in with Frontegg's hosted login; its SDK keeps the access token fresh. */
export default function FronteggSignIn({ baseUrl, clientId, children }: { baseUrl: string; clientId: string; children: ReactNode }) {
  return (
    <FronteggProvider contextOptions={{ baseUrl, clientId }} hostedLoginBox>
      <SignedIn>{children}</SignedIn>
    </FronteggProvider>
  );
}

function SignedIn({ children }: { children: ReactNode }) {
  const { user, isAuthenticated, isLoading } = useFrontegg();
  const { requestAuthorize, logout } = useAuthActions();
  const loginWithRedirect = useLoginWithRedirect();
  useEffect(() => {
    if (!isLoading && !isAuthenticated) void loginWithRedirect();
  }, [isLoading, isAuthenticated, loginWithRedirect]);

  const auth = useMemo<Auth | null>(
    () =>
      user
        ? {
            who: `${user.email} (${user.tenantId})`,
            getToken: async () => ContextHolder.for('default').getAccessToken() ?? user.accessToken,
            refresh: async () => void requestAuthorize(),
            signOut: () => logout(),
          }
        : null,
    [user, requestAuthorize, logout],
  );
  if (!auth) return <p className="notice">Signing in…</p>;
  return <AuthProvider value={auth}>{children}</AuthProvider>;
}
