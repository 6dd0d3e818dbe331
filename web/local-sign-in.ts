import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Plugin } from 'vite';
import { loadOrCreateLocalSigningKey, mintLocalToken } from '../server/auth/local-identity.js';
import { ConfigError, loadLocalIdentityConfig } from '../server/config.js';

/** How long a token from "sign in as" lives: short, as Frontegg's are, so the page's refresh path runs. */
export const LOCAL_TOKEN_SECONDS = 300;

/**
 * "Sign in as" for development: `POST /local-sign-in` with `{ email, tenantId, role }` answers a
 * token signed with the local identity key, the one `npm run token` uses. Only the dev server has
 * it (`apply: 'serve'`: never in a build), and only while its environment is in local identity
 * mode, as the API's is (no FRONTEGG_BASE_URL); otherwise it answers 404 and the page says so.
 */
export function localSignIn(): Plugin {
  return {
    name: 'local-sign-in',
    apply: 'serve',
    configureServer(server) {
      server.middlewares.use('/local-sign-in', (req, res) => void answer(req, res));
    },
  };
}

async function answer(req: IncomingMessage, res: ServerResponse) {
  const send = (status: number, body: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  if (req.method !== 'POST') return send(405, { error: 'Use POST' });
  // Only this page may ask: JSON (so another origin's page must preflight, and is refused), from
  // this dev server's own origin, on this machine (not `--host` on a network).
  const scheme = (req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http';
  const ownOrigin = `${scheme}://${req.headers.host}`;
  const address = req.socket.localAddress ?? '';
  const loopback = address === '::1' || /^(::ffff:)?127\./.test(address);
  if (!req.headers['content-type']?.startsWith('application/json') || req.headers.origin !== ownOrigin || !loopback) {
    return send(403, { error: 'Sign in as works only from this page, on this machine' });
  }
  let config;
  try {
    config = loadLocalIdentityConfig(process.env);
  } catch (error) {
    if (error instanceof ConfigError) return send(404, { error: `Local sign-in is off: ${error.message}` });
    throw error;
  }
  let request: { email?: unknown; tenantId?: unknown; role?: unknown };
  try {
    let text = '';
    for await (const chunk of req) {
      text += chunk;
      if (text.length > 4096) return send(413, { error: 'Too large' });
    }
    request = JSON.parse(text);
  } catch {
    return send(400, { error: 'Send JSON: { email, tenantId, role }' });
  }
  const { email, tenantId, role } = request;
  if (typeof email !== 'string' || !email.includes('@') || typeof tenantId !== 'string' || tenantId.trim() === '' || typeof role !== 'string') {
    return send(400, { error: 'An email, a tenant and a role are required' });
  }
  const key = await loadOrCreateLocalSigningKey(config.identity.keyFile);
  const token = await mintLocalToken(key, { email, tenantId: tenantId.trim(), roles: [role], expiresInSeconds: LOCAL_TOKEN_SECONDS });
  send(200, { token, expiresAt: Date.now() + LOCAL_TOKEN_SECONDS * 1000 });
}
