import { type FlattenedJWSInput, type JWTHeaderParameters, type JWTVerifyGetKey, errors as joseErrors, jwtVerify } from 'jose';
import { LRUCache } from 'lru-cache';
import { z } from 'zod';
import type { IdentityClaims } from '../../db/provisioning.js';
import { KeySetUnavailableError } from './key-set.js';

/** Why a request carries no usable identity. `key_set_unavailable` is our fault, not the caller's. */
export type AccessTokenFailure =
  | 'missing'
  | 'malformed'
  | 'expired'
  | 'invalid'
  | 'unsupported_token_type'
  | 'key_set_unavailable';

export class AccessTokenError extends Error {
  override name = 'AccessTokenError';
  constructor(
    readonly reason: AccessTokenFailure,
    message: string,
  ) {
    super(message);
  }
}

export interface VerifiedAccessToken {
  /** What provisioning writes. */
  identity: IdentityClaims;
  /** Frontegg's role keys, as the token has them (none when its template leaves them out). */
  roles: readonly string[];
  /** Permission keys, as the token has them; see `hasPermission` for what they grant. */
  permissions: readonly string[];
  /** Every tenant the person belongs to; the current one alone when the template leaves them out. */
  tenantIds: readonly string[];
  expiresAt: Date;
}

export type AccessTokenVerifier = (token: string) => Promise<VerifiedAccessToken>;

export interface AccessTokenVerifierOptions {
  keySet: JWTVerifyGetKey;
  issuer: string;
  /** When set, the token's `aud` must contain one of these. */
  audience?: readonly string[] | undefined;
  /**
   * How many verified tokens to remember (least recently used first out), so that a token seen
   * again skips the RSA check. 0 verifies every time. Default 10,000.
   */
  cacheEntries?: number;
  /** The most memory remembered tokens may take, estimated (default 32 MiB): tokens vary in size. */
  cacheMaxBytes?: number;
  /** Told how each accepted token was accepted: its signature checked, or remembered (metrics, tests). */
  onAccepted?: ((how: 'signature' | 'remembered') => void) | undefined;
}

export const DEFAULT_TOKEN_CACHE_ENTRIES = 10_000;
export const DEFAULT_TOKEN_CACHE_MAX_BYTES = 32 * 1024 * 1024;

/** Headers above this size are refused before any parsing. */
export const MAX_AUTHORIZATION_HEADER_BYTES = 8 * 1024;
const CLOCK_TOLERANCE_SECONDS = 5;

const bearerPattern = /^Bearer +([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$/i;

/**
 * The token of an `Authorization: Bearer` header; `null` when there is no header at all.
 * Anything else that is not a well-formed compact JWS is refused here, before jose sees it.
 */
export function parseBearerToken(header: string | undefined): string | null {
  if (header === undefined) return null;
  if (header.length > MAX_AUTHORIZATION_HEADER_BYTES) {
    throw new AccessTokenError('malformed', 'Authorization header is too large');
  }
  const token = bearerPattern.exec(header.trim())?.[1];
  if (!token) {
    throw new AccessTokenError('malformed', 'Authorization header must be "Bearer <access token>"');
  }
  return token;
}

// Control characters (NUL included: PostgreSQL's text refuses it) and lone UTF-16 surrogates
// (stored as U+FFFD, so `corp\ud800` and `corp\udbff` would become one tenant).
const unstorable = /[\p{Cc}\p{Surrogate}]/u;

/** An identifier that decides who someone is or what they may do: refused unless stored exactly as sent. */
export const identifier = (max: number) =>
  z
    .string()
    .min(1)
    .max(max)
    .refine((value) => !unstorable.test(value));

// Characters that reorder the text around them: a name could show as another in an admin's list.
const bidiControl = /[\u202a-\u202e\u2066-\u2069]/;
const bidiControls = new RegExp(bidiControl, 'g');

/**
 * A claim only shown to people (a name, a picture): a person cannot always fix their own, so it is
 * cleaned rather than refused. Control and text-direction characters go (tabs and line breaks become a
 * space, and runs of spaces one), lone surrogates become U+FFFD, and what is left blank is `null`.
 */
export const displayText = (max: number) =>
  z
    .string()
    .max(max)
    .transform((value) => {
      const cleaned = value
        .replace(/[\t\n\r]+/g, ' ')
        .replace(bidiControls, '')
        .replace(/\p{Cc}/gu, '')
        .replace(/ {2,}/g, ' ')
        .replace(/\p{Surrogate}/gu, '\uFFFD')
        .trim();
      return cleaned === '' ? null : cleaned;
    });

/**
 * An email is an address, not only text to show: one that cleaning would change is some other
 * address, so it is kept only as sent (trimmed), else dropped (`null`, and not verified).
 */
export const emailAddress = z
  .string()
  .max(320)
  .transform((value) => {
    const trimmed = value.trim();
    return trimmed === '' || unstorable.test(trimmed) || bidiControl.test(trimmed) || /\s/.test(trimmed) ? null : trimmed;
  });

/** A picture URL is kept only when it is an http(s) URL: a `javascript:` one would run where it is shown. */
export const pictureUrl = displayText(2048).transform((value) => {
  if (value === null || !URL.canParse(value)) return null;
  return ['http:', 'https:'].includes(new URL(value).protocol) ? value : null;
});

// Frontegg's token template can remove any of the optional claims, and `null` is a value it sends.
const claimsSchema = z.object({
  // Within what a Date can hold (the year 9999), so `expiresAt` is always a real date.
  exp: z.number().int().max(253_402_300_799),
  iat: z.number().int().min(0).max(253_402_300_799).optional(),
  sub: identifier(256),
  tenantId: identifier(256),
  type: z.string(),
  email: emailAddress.nullish(),
  name: displayText(512).nullish(),
  profilePictureUrl: pictureUrl.nullish(),
  email_verified: z.boolean().nullish(),
  roles: z.array(identifier(256)).max(256).nullish(),
  permissions: z.array(identifier(256)).max(1024).nullish(),
  tenantIds: z.array(identifier(256)).max(1024).nullish(),
});

/**
 * Verifies Frontegg user tokens. A verified token is remembered until its `exp` (never longer),
 * together with the key that verified it; using it again asks the key set for that key once more,
 * a lookup in memory, and checks it afresh when the key set answers otherwise (a rotation or a
 * withdrawn key). A token that failed is never remembered.
 */
export function createAccessTokenVerifier(options: AccessTokenVerifierOptions): AccessTokenVerifier {
  const { onAccepted } = options;
  const uncached = createUncachedVerifier(options);
  const verify = async (token: string) => {
    const fresh = await uncached(token);
    onAccepted?.('signature');
    return fresh;
  };
  const entries = options.cacheEntries ?? DEFAULT_TOKEN_CACHE_ENTRIES;
  if (entries === 0) return async (token) => (await verify(token)).verified;
  const cache = new LRUCache<string, VerifiedWithKey>({
    max: entries,
    maxSize: options.cacheMaxBytes ?? DEFAULT_TOKEN_CACHE_MAX_BYTES,
    // The token is held twice (the key and the parts jose was given), with its identity.
    sizeCalculation: (entry, token) => 2 * token.length + JSON.stringify(entry.verified).length + 512,
  });

  return async (token) => {
    const cached = cache.get(token);
    if (cached) {
      if (cached.verified.expiresAt.getTime() > Date.now() && (await keyStillServes(options.keySet, cached))) {
        onAccepted?.('remembered');
        return cached.verified;
      }
      cache.delete(token);
    }
    const fresh = await verify(token);
    const lifetimeMs = fresh.verified.expiresAt.getTime() - Date.now();
    if (lifetimeMs > 0) cache.set(token, fresh, { ttl: lifetimeMs });
    return fresh.verified;
  };
}

interface VerifiedWithKey {
  verified: VerifiedAccessToken;
  /** What jose asked the key set with, and what the key set answered, when the token was verified. */
  header: JWTHeaderParameters;
  input: FlattenedJWSInput;
  key: unknown;
}

async function keyStillServes(keySet: JWTVerifyGetKey, cached: VerifiedWithKey): Promise<boolean> {
  try {
    return (await keySet(cached.header, cached.input)) === cached.key;
  } catch {
    // Whatever the key set says now (an unknown kid, an outage) is for the full check to answer.
    return false;
  }
}

function createUncachedVerifier(options: AccessTokenVerifierOptions) {
  const audience = options.audience?.length ? [...options.audience] : undefined;
  return async (token: string): Promise<VerifiedWithKey> => {
    let payload;
    let used: Pick<VerifiedWithKey, 'header' | 'input' | 'key'> | undefined;
    try {
      ({ payload } = await jwtVerify(
        token,
        async (header, input) => {
          const key = await options.keySet(header, input);
          used = { header, input, key };
          return key;
        },
        {
          algorithms: ['RS256'],
          issuer: options.issuer,
          audience,
          requiredClaims: ['exp', 'sub', 'tenantId'],
          clockTolerance: CLOCK_TOLERANCE_SECONDS,
        },
      ));
    } catch (error) {
      throw toAccessTokenError(error);
    }
    const claims = claimsSchema.safeParse(payload);
    if (!claims.success) {
      throw new AccessTokenError('invalid', 'Access token claims are malformed');
    }
    if (claims.data.type !== 'userToken') {
      throw new AccessTokenError('unsupported_token_type', 'Only user tokens (type "userToken") are accepted');
    }
    if (!used) throw new Error('jose verified a token without asking the key set');
    const { exp, iat, sub, tenantId, email, name, profilePictureUrl, email_verified, roles, permissions, tenantIds } = claims.data;
    // Shared by every request that presents this token again, so nobody may change it.
    const identity: IdentityClaims = Object.freeze({
      userId: sub,
      tenantId,
      email,
      name,
      avatarUrl: profilePictureUrl,
      // A dropped email is not a verified one.
      emailVerified: email === null && typeof payload.email === 'string' ? false : (email_verified ?? undefined),
      // Absent, the stored role stays (see `provisionIdentity`).
      roles: roles ? Object.freeze([...roles]) : undefined,
      // A token without `iat` says nothing of when its roles held: a webhook's role stands.
      asOf: iat === undefined ? undefined : new Date(iat * 1000),
    });
    const verified: VerifiedAccessToken = {
      identity,
      roles: Object.freeze([...(roles ?? [])]),
      permissions: Object.freeze([...(permissions ?? [])]),
      tenantIds: Object.freeze([...(tenantIds ?? [tenantId])]),
      expiresAt: new Date(exp * 1000),
    };
    return { verified: Object.freeze(verified), ...used };
  };
}

function toAccessTokenError(error: unknown): AccessTokenError {
  if (error instanceof KeySetUnavailableError) {
    return new AccessTokenError('key_set_unavailable', 'Signing keys are unavailable; try again shortly');
  }
  if (error instanceof joseErrors.JWTExpired) {
    return new AccessTokenError('expired', 'Access token has expired');
  }
  if (error instanceof joseErrors.JWTClaimValidationFailed) {
    return new AccessTokenError('invalid', `Access token claim "${error.claim}" is invalid`);
  }
  if (error instanceof joseErrors.JWKSNoMatchingKey) {
    return new AccessTokenError('invalid', 'Access token is signed by an unknown key');
  }
  // Bad signatures, algorithms, headers, encodings: whatever else a hostile token can cause is
  // the caller's fault, never a 5xx.
  return new AccessTokenError('invalid', 'Access token is invalid');
}
