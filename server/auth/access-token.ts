import { type JWTVerifyGetKey, errors as joseErrors, jwtVerify } from 'jose';
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
  identity: IdentityClaims;
  expiresAt: Date;
}

export type AccessTokenVerifier = (token: string) => Promise<VerifiedAccessToken>;

export interface AccessTokenVerifierOptions {
  keySet: JWTVerifyGetKey;
  issuer: string;
  /** When set, the token's `aud` must contain one of these. */
  audience?: readonly string[] | undefined;
}

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

// Frontegg's token template can remove any of the optional claims, and `null` is a value it sends.
const claimsSchema = z.object({
  // Within what a Date can hold (the year 9999), so `expiresAt` is always a real date.
  exp: z.number().int().max(253_402_300_799),
  sub: z.string().min(1).max(256),
  tenantId: z.string().min(1).max(256),
  type: z.string(),
  email: z.string().max(320).nullish(),
  name: z.string().max(512).nullish(),
  profilePictureUrl: z.string().max(2048).nullish(),
  email_verified: z.boolean().nullish(),
  roles: z.array(z.string().max(256)).max(256).nullish(),
});

export function createAccessTokenVerifier(options: AccessTokenVerifierOptions): AccessTokenVerifier {
  const audience = options.audience?.length ? [...options.audience] : undefined;
  return async (token) => {
    let payload;
    try {
      ({ payload } = await jwtVerify(token, options.keySet, {
        algorithms: ['RS256'],
        issuer: options.issuer,
        audience,
        requiredClaims: ['exp', 'sub', 'tenantId'],
        clockTolerance: CLOCK_TOLERANCE_SECONDS,
      }));
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
    const { exp, sub, tenantId, email, name, profilePictureUrl, email_verified, roles } = claims.data;
    return {
      identity: {
        userId: sub,
        tenantId,
        email,
        name,
        avatarUrl: profilePictureUrl,
        emailVerified: email_verified ?? undefined,
        roles: roles ?? [],
      },
      expiresAt: new Date(exp * 1000),
    };
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
