import { type ReactNode, createContext, useCallback, useContext, useMemo, useState } from 'react';

/** What the page needs of a sign-in, whichever kind. */
export interface Auth {
  /** Who is signed in, to show. */
  who: string;
  /** The current access token, refreshed first when it is about to expire. */
  getToken(): Promise<string | null>;
  /** A new token now: after a 401. */
  refresh(): Promise<void>;
  signOut(): void;
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
export function LocalSignIn({ children }: { children: ReactNode }) {
  const [session, setSession] = useState<LocalSession | null>(() => {
    const stored = localStorage.getItem(STORAGE_KEY);
    return stored ? (JSON.parse(stored) as LocalSession) : null;
  });
  const keep = useCallback((next: LocalSession | null) => {
    if (next) localStorage.setItem(STORAGE_KEY, JSON.stringify(next));
    else localStorage.removeItem(STORAGE_KEY);
    setSession(next);
  }, []);

  const auth = useMemo<Auth | null>(() => {
    if (!session) return null;
    let current = session;
    const refresh = async () => {
      current = await mint(current);
      keep(current);
    };
    return {
      who: `${session.email} in ${session.tenantId} (${session.role})`,
      async getToken() {
        if (current.expiresAt - Date.now() < 30_000) await refresh();
        return current.token;
      },
      refresh,
      signOut: () => keep(null),
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
