import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAccessTokenVerifier } from '../../server/auth/access-token.js';
import {
  LOCAL_AUDIENCE,
  LOCAL_ISSUER,
  createLocalKeySet,
  loadOrCreateLocalSigningKey,
  mintLocalToken,
} from '../../server/auth/local-identity.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'local-identity-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('local identity mode', () => {
  it('creates the key pair once, even when many start at the same moment', async () => {
    const file = join(dir, 'nested', 'signing-key.json');
    const keys = await Promise.all(Array.from({ length: 10 }, () => loadOrCreateLocalSigningKey(file)));
    expect(new Set(keys.map((k) => k.kid)).size).toBe(1);
    expect((await loadOrCreateLocalSigningKey(file)).kid).toBe(keys[0]!.kid);
    expect((await stat(file)).mode & 0o077).toBe(0);
  });

  it('mints Frontegg-shaped user tokens that the local key set verifies', async () => {
    const key = await loadOrCreateLocalSigningKey(join(dir, 'key.json'));
    const request = { email: 'Ada@Example.com', tenantId: 'acme', roles: ['Admin'], expiresInSeconds: 60 };
    const token = await mintLocalToken(key, request);
    expect(decodeJwt(token)).toMatchObject({ type: 'userToken', tenantId: 'acme', iss: LOCAL_ISSUER, aud: LOCAL_AUDIENCE });

    const verify = createAccessTokenVerifier({ keySet: createLocalKeySet(key), issuer: LOCAL_ISSUER, audience: [LOCAL_AUDIENCE] });
    const { identity } = await verify(token);
    expect(identity).toMatchObject({ tenantId: 'acme', email: 'Ada@Example.com', name: 'Ada', roles: ['Admin'] });
    // The same email is the same user on every token.
    expect((await verify(await mintLocalToken(key, { ...request, email: 'ada@example.com' }))).identity.userId).toBe(
      identity.userId,
    );
  });

  it('does not trust another key file’s tokens', async () => {
    const mine = await loadOrCreateLocalSigningKey(join(dir, 'mine.json'));
    const theirs = await loadOrCreateLocalSigningKey(join(dir, 'theirs.json'));
    const verify = createAccessTokenVerifier({ keySet: createLocalKeySet(mine), issuer: LOCAL_ISSUER, audience: [LOCAL_AUDIENCE] });
    const token = await mintLocalToken(theirs, { email: 'eve@example.com', tenantId: 'acme', roles: ['Admin'], expiresInSeconds: 60 });
    await expect(verify(token)).rejects.toMatchObject({ reason: 'invalid' });
  });
});
