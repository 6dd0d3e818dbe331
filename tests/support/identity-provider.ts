import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { type JWTHeaderParameters, SignJWT, exportJWK, generateKeyPair } from 'jose';
import type { LocalSigningKey as SigningKey } from '../../server/auth/local-identity.js';

export async function createSigningKey(kid: string = randomUUID()): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  return { kid, privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' } };
}

export interface MintOptions {
  /** Claims to set; a claim set to `undefined` is left out of the token. */
  claims?: Record<string, unknown>;
  /** Header fields beyond `alg` and `kid`. */
  header?: Partial<JWTHeaderParameters>;
  /** Sign with this key instead of the published one (the header still names `kid`). */
  signWith?: SigningKey;
  kid?: string;
}

/**
 * A stand-in for a Frontegg environment: a real RS256 key set served over loopback HTTP, and
 * tokens shaped like Frontegg's user tokens (shared/FRONTEGG.md) signed with it.
 */
export interface TestIdentityProvider {
  issuer: string;
  audience: string;
  jwksUrl: string;
  /** The key tokens are signed with unless `signWith` says otherwise. */
  key: SigningKey;
  /** How many times the key set was asked for, whatever the answer. */
  readonly keySetFetches: number;
  /** Publishes these keys from now on (a rotation), instead of `key` alone. */
  publish(keys: SigningKey[]): void;
  /**
   * How the key-set endpoint answers from now on: `up` with the keys, `error` with HTTP 503,
   * `reset` by dropping the connection, `hang` never.
   */
  setKeySetState(state: KeySetState): void;
  mintToken(options?: MintOptions): Promise<string>;
  close(): Promise<void>;
}

export type KeySetState = 'up' | 'error' | 'reset' | 'hang';

export async function startIdentityProvider(): Promise<TestIdentityProvider> {
  const key = await createSigningKey();
  let published = [key];
  let state: KeySetState = 'up';
  let keySetFetches = 0;
  const server = http.createServer((req, res) => {
    if (req.url !== '/.well-known/jwks.json') return res.writeHead(404).end();
    keySetFetches += 1;
    if (state === 'error') return res.writeHead(503).end();
    if (state === 'reset') return req.socket.destroy();
    if (state === 'hang') return;
    const body = JSON.stringify({ keys: published.map((published) => published.publicJwk) });
    res.writeHead(200, { 'content-type': 'application/json' }).end(body);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const issuer = 'https://auth.test.example';
  const audience = 'test-application-client-id';

  return {
    issuer,
    audience,
    jwksUrl: `${base}/.well-known/jwks.json`,
    key,
    get keySetFetches() {
      return keySetFetches;
    },
    publish(keys) {
      published = keys;
    },
    setKeySetState(next) {
      state = next;
    },
    mintToken({ claims = {}, header = {}, signWith = key, kid = key.kid } = {}) {
      const now = Math.floor(Date.now() / 1000);
      const payload: Record<string, unknown> = {
        sub: randomUUID(),
        name: 'Test User',
        email: 'test.user@example.com',
        email_verified: true,
        roles: ['Admin'],
        permissions: ['fe.secure.*'],
        tenantId: randomUUID(),
        type: 'userToken',
        aud: audience,
        iss: issuer,
        iat: now,
        exp: now + 300,
        // Frontegg's tokens carry none, but it makes every token a distinct string, as two tokens
        // issued to one person a second apart are.
        jti: randomUUID(),
        ...claims,
      };
      for (const [name, value] of Object.entries(payload)) if (value === undefined) delete payload[name];
      return new SignJWT(payload)
        .setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid, ...header })
        .sign(signWith.privateKey);
    },
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}
