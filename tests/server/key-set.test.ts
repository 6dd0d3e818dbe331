import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TRPCError } from '@trpc/server';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createAccessTokenVerifier } from '../../server/auth/access-token.js';
import { createRemoteKeySet } from '../../server/auth/key-set.js';
import { type ServerDeps, authenticate, createInnerContext } from '../../server/context.js';
import { createCaller } from '../../server/root.js';
import { clientError, expectTRPCError } from '../support/errors.js';
import { type TestIdentityProvider, createSigningKey, startIdentityProvider } from '../support/identity-provider.js';
import { type TestApp, startHttpServer, startTestApp } from '../support/test-app.js';

// Short periods so that expiry and cooldowns pass within a test; production uses 10 min and 30 s.
const COOLDOWN_MS = 150;
const MAX_AGE_MS = 300;

let app: TestApp;
let idp: TestIdentityProvider;
beforeAll(async () => {
  app = await startTestApp();
});
afterAll(() => app.close());
afterEach(() => idp?.close());

/** A fresh identity provider and the deps of a server trusting it with these key-set settings. */
async function serverTrustingNewProvider(settings: { cooldownMs?: number; maxAgeMs?: number; timeoutMs?: number } = {}) {
  idp = await startIdentityProvider();
  const keySet = createRemoteKeySet({
    jwksUrl: idp.jwksUrl,
    issuer: idp.issuer,
    cooldownMs: COOLDOWN_MS,
    maxAgeMs: MAX_AGE_MS,
    log: app.deps.log,
    ...settings,
  });
  const deps: ServerDeps = {
    ...app.deps,
    verifyAccessToken: createAccessTokenVerifier({ keySet, issuer: idp.issuer, audience: [idp.audience] }),
  };
  return deps;
}

async function me(deps: ServerDeps, token: string) {
  return createCaller(createInnerContext(deps, await authenticate(deps, `Bearer ${token}`))).me();
}

/** Waits (up to 5 s) until `condition` holds. */
async function until(condition: () => boolean | Promise<boolean>) {
  for (let waited = 0; !(await condition()); waited += 10) {
    if (waited > 5_000) throw new Error('timed out waiting for a condition');
    await sleep(10);
  }
}

/** Waits until the provider has been asked for its keys `count` times in all. */
function untilFetches(count: number) {
  return until(() => idp.keySetFetches >= count);
}

describe('key rotation', () => {
  it('accepts a token signed with a newly published key, without a restart', async () => {
    const deps = await serverTrustingNewProvider();
    expect((await me(deps, await idp.mintToken())).role).toBe('admin');

    const next = await createSigningKey();
    idp.publish([idp.key, next]);
    await sleep(COOLDOWN_MS + 50);
    const token = await idp.mintToken({ signWith: next, kid: next.kid });
    expect((await me(deps, token)).role).toBe('admin');
    expect(idp.keySetFetches).toBe(2);
  });

  it('refuses a key withdrawn from the key set once the keys are refetched', async () => {
    const deps = await serverTrustingNewProvider();
    // Issued a minute before the refetch, so the refetched set is known to lack its key.
    const token = await idp.mintToken({ claims: { iat: Math.floor(Date.now() / 1000) - 60 } });
    await me(deps, token);

    idp.publish([await createSigningKey()]);
    await sleep(MAX_AGE_MS + 50);
    // The first use after expiry answers from the keys held and refreshes them in the background.
    await me(deps, token);
    await untilFetches(2);
    // Once the refetched set is in place (it is being parsed), the old key is refused.
    await until(async () => (await authenticate(deps, `Bearer ${token}`)).status === 'signed-out');
    await expectTRPCError(me(deps, token), 'UNAUTHORIZED');
    expect(idp.keySetFetches).toBe(2);
  });
});

describe('an unknown-kid flood', () => {
  it('fetches nothing within the cooldown, and no refusal waits for the network', async () => {
    const deps = await serverTrustingNewProvider({ cooldownMs: 60_000, timeoutMs: 30_000 });
    await me(deps, await idp.mintToken());
    expect(idp.keySetFetches).toBe(1);

    // Were any refusal to fetch, it would hang here: the endpoint now never answers.
    idp.setKeySetState('hang');
    const attacker = await createSigningKey();
    const tokens = await Promise.all(
      Array.from({ length: 300 }, () => idp.mintToken({ signWith: attacker, kid: randomUUID() })),
    );
    // Not known to be bad until a fetch has looked: retry (503), not signed out (401).
    const errors = await Promise.all(tokens.map((token) => expectTRPCError(me(deps, token), 'SERVICE_UNAVAILABLE')));
    expect(new Set(errors.map((error) => error.message))).toEqual(new Set(['Signing keys are unavailable; try again shortly']));
    expect(idp.keySetFetches).toBe(1);
  });

  it('answers a key published within the cooldown with 503, then, once a fetch is allowed, makes it and serves the token', async () => {
    const cooldownMs = 1_000;
    const deps = await serverTrustingNewProvider({ cooldownMs });
    await me(deps, await idp.mintToken());
    const rotated = await createSigningKey();
    idp.publish([idp.key, rotated]);
    const fresh = await idp.mintToken({ signWith: rotated, kid: rotated.kid });

    const early = await expectTRPCError(me(deps, fresh), 'SERVICE_UNAVAILABLE');
    expect(early.cause).toMatchObject({ reason: 'key_set_unavailable' });
    expect(idp.keySetFetches).toBe(1);
    await sleep(cooldownMs + 50);
    expect((await me(deps, fresh)).role).toBe('admin');
    expect(idp.keySetFetches).toBe(2);
  });

  it('answers 401 within the cooldown to a token issued well before the last fetch: its key was not published then', async () => {
    const deps = await serverTrustingNewProvider({ cooldownMs: 60_000 });
    await me(deps, await idp.mintToken());
    const attacker = await createSigningKey();
    const old = await idp.mintToken({ signWith: attacker, kid: randomUUID(), claims: { iat: Math.floor(Date.now() / 1000) - 60 } });
    await expectTRPCError(me(deps, old), 'UNAUTHORIZED');
    expect(idp.keySetFetches).toBe(1);
  });

  it.each([
    ['of another issuer', { iss: 'https://elsewhere.example' }],
    ['expired', { exp: Math.floor(Date.now() / 1000) - 60 }],
    ['without iat', { iat: undefined }],
  ])('answers 401 within the cooldown to an unknown kid on a token %s: only a current token of ours may retry', async (_, claims) => {
    const deps = await serverTrustingNewProvider({ cooldownMs: 60_000 });
    await me(deps, await idp.mintToken());
    const attacker = await createSigningKey();
    await expectTRPCError(me(deps, await idp.mintToken({ signWith: attacker, kid: randomUUID(), claims })), 'UNAUTHORIZED');
    expect(idp.keySetFetches).toBe(1);
  });

  it('still answers 401 to a kid that a fetch allowed by the cooldown did not find', async () => {
    const deps = await serverTrustingNewProvider();
    await me(deps, await idp.mintToken());
    await sleep(COOLDOWN_MS + 50);
    const attacker = await createSigningKey();
    const error = await expectTRPCError(me(deps, await idp.mintToken({ signWith: attacker, kid: randomUUID() })), 'UNAUTHORIZED');
    expect(error.message).toBe('Access token is signed by an unknown key');
    expect(idp.keySetFetches).toBe(2);
  });

  it('fetches at most once per cooldown period while the flood goes on', async () => {
    const deps = await serverTrustingNewProvider();
    await me(deps, await idp.mintToken());
    const attacker = await createSigningKey();
    const started = performance.now();
    let refused = 0;
    while (performance.now() - started < COOLDOWN_MS * 5) {
      const batch = await Promise.all(
        Array.from({ length: 20 }, () => idp.mintToken({ signWith: attacker, kid: randomUUID() })),
      );
      // 401 where a fetch allowed by the cooldown looked for the kid, 503 (retry) within the cooldown.
      const codes = await Promise.all(
        batch.map((token) => me(deps, token).then(() => 'accepted', (error: TRPCError) => error.code)),
      );
      expect(codes.every((code) => code === 'UNAUTHORIZED' || code === 'SERVICE_UNAVAILABLE')).toBe(true);
      refused += batch.length;
    }
    const periods = Math.ceil((performance.now() - started) / COOLDOWN_MS);
    expect(refused).toBeGreaterThan(100);
    // The first fetch, then one per period at most.
    expect(idp.keySetFetches).toBeGreaterThan(1);
    expect(idp.keySetFetches).toBeLessThanOrEqual(1 + periods);
  });
});

describe.each(['error', 'reset', 'hang'] as const)('a key-set outage (%s)', (state) => {
  it('keeps known keys working past their expiry, answers 503 for a key it cannot fetch, and recovers', async () => {
    const deps = await serverTrustingNewProvider({ timeoutMs: 200 });
    const known = await idp.mintToken();
    await me(deps, known);

    idp.setKeySetState(state);
    const rotated = await createSigningKey();
    idp.publish([idp.key, rotated]);
    const started = performance.now();
    // Across several expiries and cooldowns: the last good keys are served all along.
    while (performance.now() - started < MAX_AGE_MS * 3) {
      expect((await me(deps, known)).role).toBe('admin');
      await sleep(25);
    }
    const periods = Math.ceil((performance.now() - started) / COOLDOWN_MS);
    expect(idp.keySetFetches).toBeGreaterThan(1);
    expect(idp.keySetFetches).toBeLessThanOrEqual(1 + periods);

    const unknown = await idp.mintToken({ signWith: rotated, kid: rotated.kid });
    const error = await expectTRPCError(me(deps, unknown), 'SERVICE_UNAVAILABLE');
    expect(error.message).toMatch(/Signing keys are unavailable/);

    idp.setKeySetState('up');
    await sleep(COOLDOWN_MS + 250);
    expect((await me(deps, unknown)).role).toBe('admin');
  });
});

describe('a key set never fetched', () => {
  it('answers 503 SERVICE_UNAVAILABLE over HTTP, not 401: the fault is ours', async () => {
    // A longer cooldown, so that the second request surely falls within it.
    const cooldownMs = 2_000;
    const deps = await serverTrustingNewProvider({ cooldownMs });
    idp.setKeySetState('reset');
    const http = await startHttpServer(app, { verifyAccessToken: deps.verifyAccessToken });
    try {
      const token = await idp.mintToken();
      const error = await clientError(http.clientFor(token).me.query());
      expect(error.data?.httpStatus).toBe(503);
      expect(error.data?.code).toBe('SERVICE_UNAVAILABLE');
      expect(error.data?.authReason).toBe('key_set_unavailable');

      // Within the cooldown nothing is fetched again; after it the key set is, and the token works.
      await clientError(http.clientFor(token).me.query());
      expect(idp.keySetFetches).toBe(1);
      idp.setKeySetState('up');
      await sleep(cooldownMs + 50);
      expect((await http.clientFor(token).me.query()).role).toBe('admin');
    } finally {
      await http.close();
    }
  });
});
