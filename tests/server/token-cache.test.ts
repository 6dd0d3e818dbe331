import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { AccessTokenError, createAccessTokenVerifier } from '../../server/auth/access-token.js';
import { createRemoteKeySet } from '../../server/auth/key-set.js';
import { type TestApp, startTestApp } from '../support/test-app.js';

let app: TestApp;
beforeAll(async () => {
  app = await startTestApp();
});
afterAll(() => app.close());
afterEach(() => {
  vi.useRealTimers();
});

/** A verifier trusting the test identity provider, and how it accepted each token it accepted. */
function verifierWith(options: { cacheEntries?: number; cacheMaxBytes?: number } = {}) {
  const accepted: string[] = [];
  const verify = createAccessTokenVerifier({
    keySet: createRemoteKeySet({ jwksUrl: app.idp.jwksUrl, issuer: app.idp.issuer, maxAgeMs: 600_000, cooldownMs: 30_000, log: app.deps.log }),
    issuer: app.idp.issuer,
    audience: [app.idp.audience],
    onAccepted: (how) => accepted.push(how),
    ...options,
  });
  return { verify, accepted };
}

async function refusal(promise: Promise<unknown>): Promise<AccessTokenError> {
  const error = await promise.then(
    () => null,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(AccessTokenError);
  return error as AccessTokenError;
}

const now = () => Math.floor(Date.now() / 1000);

describe('the verified-token cache', () => {
  it('checks a token signature once, then answers it from memory', async () => {
    const { verify, accepted } = verifierWith();
    const token = await app.idp.mintToken();
    const first = await verify(token);
    expect(await verify(token)).toEqual(first);
    expect(await verify(token)).toEqual(first);
    expect(accepted).toEqual(['signature', 'remembered', 'remembered']);
  });

  it('refuses a remembered token once it has expired', async () => {
    const { verify, accepted } = verifierWith();
    const exp = now() + 60;
    const token = await app.idp.mintToken({ claims: { exp } });
    await verify(token);
    await verify(token);

    // Only the wall clock moves: were the entry kept by the cache's own (monotonic) timer, it
    // would still answer.
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime((exp + 3_600) * 1000);
    expect((await refusal(verify(token))).reason).toBe('expired');
    expect(accepted).toEqual(['signature', 'remembered']);
  });

  it('never remembers a refusal: a token refused as not yet valid is accepted once it is', async () => {
    const { verify, accepted } = verifierWith();
    const nbf = now() + 600;
    const token = await app.idp.mintToken({ claims: { nbf, exp: nbf + 600 } });
    expect((await refusal(verify(token))).reason).toBe('invalid');

    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime((nbf + 10) * 1000);
    expect((await verify(token)).identity.userId).toBeTypeOf('string');
    expect(accepted).toEqual(['signature']);
  });

  it('refuses tokens it was never able to verify, however often they come', async () => {
    const { verify, accepted } = verifierWith();
    const token = await app.idp.mintToken();
    const [header, payload] = token.split('.');
    const forged = `${header}.${payload}.${Buffer.from('not the signature').toString('base64url')}`;
    for (let attempt = 0; attempt < 3; attempt += 1) await refusal(verify(forged));
    expect(accepted).toEqual([]);
  });

  it('holds at most its number of entries, dropping the least recently used', async () => {
    const { verify, accepted } = verifierWith({ cacheEntries: 2 });
    const [a, b, c] = await Promise.all([0, 1, 2].map(() => app.idp.mintToken({ claims: { sub: randomUUID() } })));
    for (const token of [a, b, c, c, a]) await verify(token!);
    // a was dropped when c came in; c was remembered.
    expect(accepted).toEqual(['signature', 'signature', 'signature', 'remembered', 'signature']);
  });

  it('checks every token when turned off (TOKEN_CACHE_MAX_ENTRIES=0)', async () => {
    const { verify, accepted } = verifierWith({ cacheEntries: 0 });
    const token = await app.idp.mintToken();
    await verify(token);
    await verify(token);
    expect(accepted).toEqual(['signature', 'signature']);
  });

  it('hands every request the same identity, which nobody can change', async () => {
    const { verify } = verifierWith();
    const token = await app.idp.mintToken({ claims: { roles: ['Admin'] } });
    const { identity } = await verify(token);
    expect(() => {
      (identity as { tenantId: string }).tenantId = 'another-tenant';
    }).toThrow(TypeError);
    expect(() => (identity.roles as string[]).push('Owner')).toThrow(TypeError);
    expect((await verify(token)).identity.roles).toEqual(['Admin']);
  });

  it('is bounded in bytes as well as entries: large tokens push older ones out', async () => {
    // Each token carries 3,000 characters of roles: about 10 KB remembered, so 40 KB holds three.
    const { verify, accepted } = verifierWith({ cacheMaxBytes: 40_000 });
    const roles = Array.from({ length: 30 }, (_, i) => `role-${i}-${'x'.repeat(93)}`);
    const tokens = await Promise.all(Array.from({ length: 6 }, () => app.idp.mintToken({ claims: { roles } })));
    for (const token of tokens) await verify(token);
    accepted.length = 0;
    await verify(tokens[5]!);
    await verify(tokens[0]!);
    expect(accepted).toEqual(['remembered', 'signature']);
  });
});
