import { type ReactNode, createContext, useCallback, useContext, useEffect, useMemo, useState } from 'react';

/** What the page needs of a sign-in, whichever kind. */
export interface Auth {
  /** Who is signed in, to show. */
  who: string;
  /** The current access token; it waits for a renewal under way. */
  getToken(): Promise<string | null>;
  /**
   * After a 401: renews the token (one renewal at a time) and says whether to call again, with the
   * token `getToken` will then give. A call may have gone out with the old token and come back
   * after the renewal: if the API has accepted a call since, it is simply made again. If it has
   * not, within 30 s of a renewal, the new token is refused too, and the 401 stands.
   */
  renewAfterRefusal(): boolean;
  /** The API accepted a call: the token in use is good. */
  accepted(): void;
  signOut(): void;
}

const REFUSED_AGAIN_MS = 30_000;

/** Renewals of a token: one at a time, and `renewAfterRefusal`'s rule. */
export function createRenewals(renew: () => Promise<void>) {
  let underWay: Promise<void> | undefined;
  let finishedAt = 0;
  let acceptedSince = false;
  const now = () =>
    (underWay ??= renew()
      .catch(() => {})
      .finally(() => {
        underWay = undefined;
        finishedAt = Date.now();
        acceptedSince = false;
      }));
  return {
    now,
    /** Resolves once no renewal is under way. */
    settled: () => underWay ?? Promise.resolve(),
    afterRefusal(): boolean {
      if (underWay || acceptedSince) return true;
      if (Date.now() - finishedAt < REFUSED_AGAIN_MS) return false;
      void now();
      return true;
    },
    accepted() {
      if (!underWay) acceptedSince = true;
    },
  };
}

const AuthContext = createContext<Auth | null>(null);
export const AuthProvider = AuthContext.Provider;

export function useAuth(): Auth {
  const auth = useContext(AuthContext);
  if (!auth) throw new Error('useAuth outside a sign-in');
  return auth;
}

interface LocalIdentity {
  email: string;
  tenantId: string;
  role: string;
}

interface LocalSession extends LocalIdentity {
  token: string;
  expiresAt: number;
}

const STORAGE_KEY = 'local-sign-in';

async function mint(identity: LocalIdentity): Promise<LocalSession> {
  const response = await fetch('/local-sign-in', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(identity),
  });
  const body = (await response.json()) as { token?: string; expiresAt?: number; error?: string };
  if (!response.ok || !body.token || !body.expiresAt) throw new Error(body.error ?? `Sign-in failed (${response.status})`);
  return { ...identity, token: body.token, expiresAt: body.expiresAt };
}

/**
 * Development sign-in: "sign in as" any email, tenant and role, with a token the dev server mints
 * with the local identity key (`web/local-sign-in.ts`). Kept in localStorage, so every tab of this
 * browser is the same person, as with a real sign-in.
 */
function stored(): LocalSession | null {
  try {
    const value = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? 'null') as LocalSession | null;
    return value && typeof value.token === 'string' && typeof value.email === 'string' ? value : null;
  } catch {
    return null;
  }
}

export function LocalSignIn({ children }: { children: ReactNode }) {
  const [session, setSession] = useState<LocalSession | null>(stored);
  const keep = useCallback((next: LocalSession | null) => {
    if (next) localStorage.setItem(STORAGE_KEY, JSON.stringify(next));
    else localStorage.removeItem(STORAGE_KEY);
    setSession(next);
  }, []);
  // Signing out, or in as someone else, in another tab does so here too.
  useEffect(() => {
    const follow = (event: StorageEvent) => {
      if (event.key !== STORAGE_KEY) return;
      const next = stored();
      if (!next || next.email !== session?.email || next.tenantId !== session?.tenantId || next.role !== session?.role) setSession(next);
    };
    window.addEventListener('storage', follow);
    return () => window.removeEventListener('storage', follow);
  }, [session?.email, session?.tenantId, session?.role]);

  const auth = useMemo<Auth | null>(() => {
    if (!session) return null;
    let current = session;
    let signedOut = false;
    const renewals = createRenewals(async () => {
      const next = await mint(current);
      // Signed out meanwhile (here or in another tab): the new token is dropped, not stored back.
      if (signedOut || !stored()) return;
      current = next;
      keep(next);
    });
    return {
      who: `${session.email} in ${session.tenantId} (${session.role})`,
      async getToken() {
        if (current.expiresAt - Date.now() < 30_000) void renewals.now();
        await renewals.settled();
        return current.token;
      },
      renewAfterRefusal: renewals.afterRefusal,
      accepted: renewals.accepted,
      signOut: () => {
        signedOut = true;
        keep(null);
      },
    };
    // A refresh replaces the session object; the auth made for this person stays the same.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [session?.email, session?.tenantId, session?.role]);

  if (!auth) return <SignInForm onSignIn={async (identity) => keep(await mint(identity))} />;
  return <AuthProvider value={auth}>{children}</AuthProvider>;
}

function SignInForm({ onSignIn }: { onSignIn: (identity: LocalIdentity) => Promise<void> }) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  return (
    <form
      className="sign-in"
      onSubmit={async (event) => {
        event.preventDefault();
        const form = new FormData(event.currentTarget);
        setBusy(true);
        setError(null);
        try {
          await onSignIn({ email: String(form.get('email')), tenantId: String(form.get('tenant')), role: String(form.get('role')) });
        } catch (failure) {
          setError((failure as Error).message);
        } finally {
          setBusy(false);
        }
      }}
    >
      <h1>Sign in as</h1>
      <p className="hint">Local identity mode: the API trusts tokens this dev server mints. Set VITE_FRONTEGG_BASE_URL to sign in with Frontegg.</p>
      <label>
        Email <input name="email" type="email" required defaultValue="ada@example.com" />
      </label>
      <label>
        Tenant <input name="tenant" required defaultValue="acme" />
      </label>
      <label>
        Role
        <select name="role" defaultValue="Admin">
          <option>Admin</option>
          <option>Member</option>
          <option>ReadOnly</option>
        </select>
      </label>
      <button type="submit" disabled={busy}>
        Sign in
      </button>
      {error && <p className="error">{error}</p>}
    </form>
  );
}
