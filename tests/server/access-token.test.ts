import { KeyObject, createSign, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { eq } from 'drizzle-orm';
import { type CryptoKey, SignJWT, base64url, exportSPKI, importJWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { organizations, users } from '../../db/schema.js';
import { createAccessTokenVerifier } from '../../server/auth/access-token.js';
import { createRemoteKeySet } from '../../server/auth/key-set.js';
import { type ServerDeps, authenticate, createInnerContext } from '../../server/context.js';
import { createCaller } from '../../server/root.js';
import { expectTRPCError } from '../support/errors.js';
import { createSigningKey } from '../support/identity-provider.js';
import { type TestApp, startTestApp } from '../support/test-app.js';

let app: TestApp;
beforeAll(async () => {
  app = await startTestApp();
});
afterAll(() => app.close());

function unsignedToken(header: object, payload: object, signature = '') {
  const encode = (part: object) => base64url.encode(JSON.stringify(part));
  return `${encode(header)}.${encode(payload)}.${signature}`;
}

/**
 * A compact JWS signed with the published key, with any header at all: jose refuses to sign
 * headers it would refuse to verify, and these tests need exactly those.
 */
function signWithPublishedKey(header: object, payload: object | string) {
  const encodedHeader = base64url.encode(JSON.stringify(header));
  const encodedPayload = base64url.encode(typeof payload === 'string' ? payload : JSON.stringify(payload));
  const signature = createSign('RSA-SHA256')
    .update(`${encodedHeader}.${encodedPayload}`)
    .sign(KeyObject.from(app.idp.key.privateKey));
  return `${encodedHeader}.${encodedPayload}.${base64url.encode(signature)}`;
}

function validPayload(overrides: Record<string, unknown> = {}) {
  const now = Math.floor(Date.now() / 1000);
  return {
    sub: randomUUID(),
    tenantId: randomUUID(),
    type: 'userToken',
    iss: app.idp.issuer,
    aud: app.idp.audience,
    iat: now,
    exp: now + 300,
    ...overrides,
  };
}

function keySet(jwksUrl = app.idp.jwksUrl) {
  return createRemoteKeySet({ jwksUrl, issuer: app.idp.issuer, maxAgeMs: 600_000, cooldownMs: 30_000, log: app.deps.log });
}

/** `me` with this `Authorization` header and these deps: the whole path a request takes. */
async function me(authorization: string | undefined, deps: ServerDeps = app.deps) {
  return createCaller(createInnerContext(deps, await authenticate(deps, authorization))).me();
}

/** Calls `me` with `authorization`, expects UNAUTHORIZED, and checks that nothing was written. */
async function expectUnauthorized(authorization: string | undefined, tenantId?: string) {
  const error = await expectTRPCError(me(authorization), 'UNAUTHORIZED');
  if (tenantId) {
    expect(await app.db.select().from(organizations).where(eq(organizations.id, tenantId))).toEqual([]);
  }
  return error;
}

describe('a valid Frontegg user token', () => {
  it('signs the caller in and provisions them', async () => {
    const tenantId = randomUUID();
    const token = await app.idp.mintToken({ claims: { tenantId } });
    expect((await me(`Bearer ${token}`)).organization.id).toBe(tenantId);
    expect(await app.db.select().from(organizations).where(eq(organizations.id, tenantId))).toHaveLength(1);
  });

  it('is accepted with only the claims that are always present', async () => {
    const token = await app.idp.mintToken({
      claims: {
        name: undefined,
        email: undefined,
        email_verified: undefined,
        roles: undefined,
        permissions: undefined,
      },
    });
    expect((await me(`Bearer ${token}`)).role).toBe('member');
  });

  it('accepts any listed audience, and a lower-case scheme', async () => {
    const verifier = createAccessTokenVerifier({
      keySet: keySet(),
      issuer: app.idp.issuer,
      audience: ['other-app', app.idp.audience],
    });
    const sub = randomUUID();
    const token = await app.idp.mintToken({ claims: { sub } });
    expect((await me(`bearer ${token}`, { ...app.deps, verifyAccessToken: verifier })).user.id).toBe(sub);
  });

  it('is accepted with any audience when none is configured', async () => {
    const verifier = createAccessTokenVerifier({ keySet: keySet(), issuer: app.idp.issuer });
    const token = await app.idp.mintToken({ claims: { aud: 'some-other-app' } });
    expect((await verifier(token)).identity.userId).toBeTypeOf('string');
  });

  it('never writes the token into the logs', async () => {
    const token = await app.idp.mintToken();
    await me(`Bearer ${token}`);
    await expectUnauthorized(`Bearer ${token.slice(0, -4)}AAAA`);
    const logged = JSON.stringify(app.logs);
    expect(logged).not.toContain(token.split('.')[1]);
    expect(logged).not.toContain(token.split('.')[2]);
  });
});

describe('refused tokens answer UNAUTHORIZED and write nothing', () => {
  it('no Authorization header', async () => {
    const error = await expectUnauthorized(undefined);
    expect(error.message).toMatch(/Sign-in required/);
  });

  it.each([
    ['empty', ''],
    ['a Basic scheme', 'Basic dXNlcjpwYXNz'],
    ['Bearer with nothing', 'Bearer '],
    ['two segments', 'Bearer aaa.bbb'],
    ['four segments', 'Bearer aaa.bbb.ccc.ddd'],
    ['not base64url', 'Bearer a$a.b%b.c!c'],
    ['oversized', `Bearer ${'a'.repeat(9000)}.b.c`],
  ])('a malformed header: %s', async (_, header) => {
    const error = await expectUnauthorized(header);
    expect(error.message).toMatch(/Authorization header/);
    // The credential is never echoed back.
    const credential = header.replace(/^\S+ */, '');
    if (credential) expect(error.message).not.toContain(credential);
  });

  it('an expired token, saying that it expired', async () => {
    const tenantId = randomUUID();
    const now = Math.floor(Date.now() / 1000);
    const token = await app.idp.mintToken({ claims: { tenantId, iat: now - 600, exp: now - 60 } });
    const error = await expectUnauthorized(`Bearer ${token}`, tenantId);
    expect(error.message).toMatch(/expired/);
    expect((error.cause as { reason?: string }).reason).toBe('expired');
  });

  it('a tampered payload', async () => {
    const tenantId = randomUUID();
    const [header, , signature] = (await app.idp.mintToken()).split('.');
    const forged = base64url.encode(JSON.stringify(validPayload({ tenantId })));
    await expectUnauthorized(`Bearer ${header}.${forged}.${signature}`, tenantId);
  });

  it('the right kid with a foreign key', async () => {
    const tenantId = randomUUID();
    const attacker = await createSigningKey(app.idp.key.kid);
    const token = await app.idp.mintToken({ claims: { tenantId }, signWith: attacker });
    await expectUnauthorized(`Bearer ${token}`, tenantId);
  });

  it('an unknown kid', async () => {
    const tenantId = randomUUID();
    const attacker = await createSigningKey();
    // Issued before the key set was fetched: not a key published since (that would be a 503, retry).
    const iat = Math.floor(Date.now() / 1000) - 60;
    const token = await app.idp.mintToken({ claims: { tenantId, iat }, signWith: attacker, kid: attacker.kid });
    const error = await expectUnauthorized(`Bearer ${token}`, tenantId);
    expect(error.message).toMatch(/unknown key/);
  });

  it('alg "none"', async () => {
    const tenantId = randomUUID();
    await expectUnauthorized(`Bearer ${unsignedToken({ alg: 'none' }, validPayload({ tenantId }))}`, tenantId);
    await expectUnauthorized(`Bearer ${unsignedToken({ alg: 'none' }, validPayload({ tenantId }), 'c2ln')}`, tenantId);
  });

  it('HS256 signed with the published RSA public key (key confusion)', async () => {
    const tenantId = randomUUID();
    const pem = await exportSPKI((await importJWK(app.idp.key.publicJwk, 'RS256', { extractable: true })) as CryptoKey);
    const token = await new SignJWT(validPayload({ tenantId }))
      .setProtectedHeader({ alg: 'HS256', kid: app.idp.key.kid })
      .sign(new TextEncoder().encode(pem));
    await expectUnauthorized(`Bearer ${token}`, tenantId);
  });

  it('an embedded jwk header pointing at an attacker key', async () => {
    const tenantId = randomUUID();
    const attacker = await createSigningKey();
    const token = await app.idp.mintToken({
      claims: { tenantId, iat: Math.floor(Date.now() / 1000) - 60 },
      signWith: attacker,
      kid: attacker.kid,
      header: { jwk: attacker.publicJwk },
    });
    await expectUnauthorized(`Bearer ${token}`, tenantId);
  });

  describe('a header pointing at an attacker key, which is never fetched', () => {
    let attackerServer: http.Server;
    let attackerUrl: string;
    let attackerRequests = 0;
    let attacker: Awaited<ReturnType<typeof createSigningKey>>;
    beforeAll(async () => {
      attacker = await createSigningKey(app.idp.key.kid);
      attackerServer = http.createServer((_req, res) => {
        attackerRequests += 1;
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [attacker.publicJwk] }));
      });
      attackerServer.listen(0, '127.0.0.1');
      await once(attackerServer, 'listening');
      attackerUrl = `http://127.0.0.1:${(attackerServer.address() as AddressInfo).port}`;
    });
    afterAll(() => new Promise<void>((resolve) => attackerServer.close(() => resolve())));

    it.each([
      ['jku', () => ({ jku: `${attackerUrl}/jwks.json` })],
      ['x5u', () => ({ x5u: `${attackerUrl}/cert.pem` })],
    ])('%s', async (_, header) => {
      const tenantId = randomUUID();
      // The published kid, so only the header could make the attacker key count.
      const token = await app.idp.mintToken({ claims: { tenantId }, signWith: attacker, header: header() });
      await expectUnauthorized(`Bearer ${token}`, tenantId);
      expect(attackerRequests).toBe(0);
    });
  });

  it('a token signed by hand like the ones below is accepted when its header is plain', async () => {
    const sub = randomUUID();
    const token = signWithPublishedKey({ alg: 'RS256', kid: app.idp.key.kid }, validPayload({ sub }));
    expect((await me(`Bearer ${token}`)).user.id).toBe(sub);
  });

  it.each([
    ['an unknown critical extension', { crit: ['urn:example:must-understand'], 'urn:example:must-understand': true }],
    ['crit naming a registered parameter', { crit: ['kid'] }],
    ['an empty crit', { crit: [] }],
    ['an unencoded payload (b64: false)', { crit: ['b64'], b64: false }],
  ])('a crit header: %s', async (_, extra) => {
    const tenantId = randomUUID();
    const token = signWithPublishedKey({ alg: 'RS256', kid: app.idp.key.kid, ...extra }, validPayload({ tenantId }));
    await expectUnauthorized(`Bearer ${token}`, tenantId);
  });

  it('a nested token: a signed token whose payload is another token', async () => {
    const tenantId = randomUUID();
    const inner = await app.idp.mintToken({ claims: { tenantId } });
    const nested = signWithPublishedKey({ alg: 'RS256', kid: app.idp.key.kid, cty: 'JWT' }, inner);
    await expectUnauthorized(`Bearer ${nested}`, tenantId);
  });

  it.each([
    ['kid is a number', { alg: 'RS256', kid: 42 }],
    ['kid is an object', { alg: 'RS256', kid: { $ne: null } }],
    ['kid is 10 000 characters', { alg: 'RS256', kid: 'k'.repeat(10_000) }],
    ['no kid', { alg: 'RS256' }],
    ['alg is missing', { kid: 'published' }],
    ['alg in lower case', { alg: 'rs256', kid: 'published' }],
    ['alg is PS256 with the RSA key', { alg: 'PS256', kid: 'published' }],
    ['the header is a JSON array', ['RS256']],
    ['the header is JSON null', null],
  ])('a signed token whose header is odd: %s', async (_, header) => {
    const tenantId = randomUUID();
    // 'published' stands for the published key's kid.
    const withKid = JSON.parse(JSON.stringify(header).replace('"published"', JSON.stringify(app.idp.key.kid)));
    const token = signWithPublishedKey(withKid as object, validPayload({ tenantId }));
    await expectUnauthorized(`Bearer ${token}`, tenantId);
  });

  it.each([
    ['a JSON array', ['sub']],
    ['JSON null', 'null'],
    ['a JSON string', '"userToken"'],
    ['not JSON', '{"sub":'],
    ['exp as a string', { exp: 'tomorrow' }],
    ['exp far beyond any date', { exp: 1e20 }],
    ['sub as a number', { sub: 12345 }],
    ['tenantId as an object', { tenantId: { id: 'x' } }],
    ['roles as a string', { roles: 'Admin' }],
    ['a 300-character tenantId', { tenantId: 't'.repeat(300) }],
  ])('a signed token whose payload is odd: %s', async (_, payload) => {
    const tenantId = randomUUID();
    const body = Array.isArray(payload) ? JSON.stringify(payload) : typeof payload === 'string' ? payload : validPayload({ tenantId, ...payload });
    const token = signWithPublishedKey({ alg: 'RS256', kid: app.idp.key.kid }, body);
    await expectUnauthorized(`Bearer ${token}`, tenantId);
  });

  it.each([
    ['a wrong issuer', { iss: 'https://evil.example' }],
    ['a wrong audience', { aud: 'another-application' }],
    ['no exp', { exp: undefined }],
    ['no sub', { sub: undefined }],
    ['no tenantId', { tenantId: undefined }],
    ['an empty tenantId', { tenantId: '' }],
    ['nbf in the future', { nbf: Math.floor(Date.now() / 1000) + 3600 }],
    ['a non-string email', { email: 42 }],
  ])('%s', async (_, claims) => {
    const tenantId = randomUUID();
    const token = await app.idp.mintToken({ claims: { tenantId, ...claims } });
    await expectUnauthorized(`Bearer ${token}`, 'tenantId' in claims ? undefined : tenantId);
  });

  it.each(['userApiToken', 'tenantApiToken', 'userAccessToken', 'tenantAccessToken'])(
    'a %s, with a message that says only user tokens are accepted',
    async (type) => {
      const tenantId = randomUUID();
      const token = await app.idp.mintToken({ claims: { tenantId, type } });
      const error = await expectUnauthorized(`Bearer ${token}`, tenantId);
      expect(error.message).toMatch(/Only user tokens/);
    },
  );

  it('a token with no type at all', async () => {
    const sub = randomUUID();
    const token = await app.idp.mintToken({ claims: { sub, type: undefined } });
    await expectUnauthorized(`Bearer ${token}`);
    expect(await app.db.select().from(users).where(eq(users.id, sub))).toEqual([]);
  });
});


describe('claims that PostgreSQL could not store as sent', () => {
  const kid = () => app.idp.key.kid;
  /** A token whose payload is this JSON text, so it can carry escapes such as a lone surrogate. */
  const rawToken = (json: string) => `Bearer ${signWithPublishedKey({ alg: 'RS256', kid: kid() }, json)}`;
  /** `base` as JSON text with `claim` set to `jsonValue` (the last of a repeated key wins). */
  const withClaim = (base: object, claim: string, jsonValue: string) =>
    JSON.stringify(base).replace(/}$/, `,${JSON.stringify(claim)}:${jsonValue}}`);

  it.each([
    ['sub', 'NUL', '"alice\\u0000"'],
    ['sub', 'a lone surrogate', '"alice\\udc00"'],
    ['tenantId', 'a lone surrogate', '"corp\\ud800"'],
    ['tenantId', 'a control character', '"corp\\u001b"'],
    ['roles', 'NUL', '["Admin\\u0000"]'],
    ['roles', 'a lone surrogate', '["Admin\\ud800"]'],
    ['permissions', 'a control character', '["fe.secure.*\\u0007"]'],
  ])('refuses %s with %s as 401 invalid, before any database work', async (claim, _, value) => {
    const base = validPayload();
    const error = await expectUnauthorized(rawToken(withClaim(base, claim, value)), base.tenantId);
    expect(error.cause).toMatchObject({ reason: 'invalid' });
  });

  it('keeps tenants and users whose ids differ only in a lone surrogate apart: both are refused', async () => {
    for (const tenantId of ['"corp\\ud800"', '"corp\\udbff"']) {
      await expectUnauthorized(rawToken(withClaim(validPayload(), 'tenantId', tenantId)));
    }
    for (const sub of ['"alice\\udc00"', '"alice\\udc01"']) {
      await expectUnauthorized(rawToken(withClaim(validPayload(), 'sub', sub)));
    }
    expect(await app.db.select().from(organizations).where(eq(organizations.id, 'corp\uFFFD'))).toEqual([]);
    expect(await app.db.select().from(users).where(eq(users.id, 'alice\uFFFD'))).toEqual([]);
  });

  it('stores display claims cleaned instead of answering 500: control characters out, broken text mended', async () => {
    const payload = validPayload({ name: 'Ada\u0000 \nLove\u202elace\ud800', email: ' ada@example.com ', profilePictureUrl: 'https://cdn.example.com/a.png' });
    const answer = await me(`Bearer ${signWithPublishedKey({ alg: 'RS256', kid: kid() }, payload)}`);
    expect(answer.user).toMatchObject({ name: 'Ada Lovelace\uFFFD', email: 'ada@example.com', avatarUrl: 'https://cdn.example.com/a.png' });
  });

  it.each(['ada\u0007@example.com', 'ada\u202e@example.com', 'ada @example.com', 'ada\u0000@example.com'])(
    'drops an email that cleaning would turn into another address (%j), and does not call it verified',
    async (email) => {
      const payload = validPayload({ email, email_verified: true });
      const answer = await me(`Bearer ${signWithPublishedKey({ alg: 'RS256', kid: kid() }, payload)}`);
      expect(answer.user).toMatchObject({ email: null, emailVerified: false });
    },
  );

  it.each(['javascript:alert(1)', 'data:text/html,<script>alert(1)</script>', 'not a url', '  '])(
    'stores no avatar for the picture URL %j',
    async (profilePictureUrl) => {
      const payload = validPayload({ profilePictureUrl });
      const answer = await me(`Bearer ${signWithPublishedKey({ alg: 'RS256', kid: kid() }, payload)}`);
      expect(answer.user.avatarUrl).toBeNull();
    },
  );
});
