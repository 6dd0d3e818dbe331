import { ContextHolder, FronteggProvider, useAuth as useFrontegg, useAuthActions, useLoginWithRedirect } from '@frontegg/react';
import { type ReactNode, useEffect, useMemo } from 'react';
import { type Auth, AuthProvider, createRenewals } from './auth.js';

/** Sign-in with Frontegg's hosted login; its SDK keeps the access token fresh. */
export default function FronteggSignIn({ baseUrl, clientId, children }: { baseUrl: string; clientId: string; children: ReactNode }) {
  return (
    <FronteggProvider contextOptions={{ baseUrl, clientId }} hostedLoginBox>
      <SignedIn>{children}</SignedIn>
    </FronteggProvider>
  );
}

const currentToken = () => ContextHolder.for('default').getAccessToken();

function SignedIn({ children }: { children: ReactNode }) {
  const { user, isAuthenticated, isLoading } = useFrontegg();
  const { requestAuthorize, logout } = useAuthActions();
  const loginWithRedirect = useLoginWithRedirect();
  useEffect(() => {
    if (!isLoading && !isAuthenticated) void loginWithRedirect();
  }, [isLoading, isAuthenticated, loginWithRedirect]);

  const signedIn = Boolean(user);
  const auth = useMemo<Auth | null>(() => {
    if (!signedIn) return null;
    // The SDK's silent refresh; its token is read from the SDK on every call.
    const renewals = createRenewals(async () => void (await requestAuthorize()));
    return {
      who: `${user?.email} (${user?.tenantId})`,
      async getToken() {
        await renewals.settled();
        return currentToken() ?? user?.accessToken ?? null;
      },
      renewAfterRefusal: renewals.afterRefusal,
      accepted: renewals.accepted,
      signOut: () => logout(),
    };
    // The SDK renews the token itself: the auth made for a signed-in person stays the same.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [signedIn, user?.id, user?.tenantId, requestAuthorize, logout]);
  if (!auth) return <p className="notice">Signing in…</p>;
  return <AuthProvider value={auth}>{children}</AuthProvider>;
}
