import {
  type FlattenedJWSInput,
  type JSONWebKeySet,
  type JWTVerifyGetKey,
  base64url,
  createLocalJWKSet,
  errors as joseErrors,
} from 'jose';
import type { Logger } from '../logger.js';

/** The key set could not be fetched, so a token's key cannot be known: our fault, not the caller's. */
export class KeySetUnavailableError extends Error {
  override name = 'KeySetUnavailableError';
}

// How far the issuer's clock and ours may disagree, as the verifier allows for `exp` and `nbf`.
const ISSUER_CLOCK_SKEW_SECONDS = 5;

/**
 * Whether a token whose key we do not hold may be signed with a key published since the keys
 * were fetched at `fetchedAt`: it names our issuer, has not expired, and was issued after that
 * fetch (less the clocks' disagreement). Read before the signature is checked, so a forger can
 * pass it, and gains only a 503 instead of a 401; anything else is known to be bad.
 */
function mayBeSignedWithNewKey(token: FlattenedJWSInput, issuer: string, fetchedAt: number): boolean {
  let claims: { iss?: unknown; exp?: unknown; iat?: unknown };
  try {
    claims = JSON.parse(new TextDecoder().decode(base64url.decode(token.payload ?? '')));
  } catch {
    return false;
  }
  const now = Date.now() / 1000;
  return (
    claims.iss === issuer &&
    typeof claims.exp === 'number' &&
    claims.exp > now &&
    typeof claims.iat === 'number' &&
    claims.iat >= fetchedAt / 1000 - ISSUER_CLOCK_SKEW_SECONDS
  );
}

export interface RemoteKeySetOptions {
  jwksUrl: string;
  /** The issuer whose tokens the keys sign: only its tokens may be told to retry for a new key. */
  issuer: string;
  /** After this long the keys are refetched in the background; until that succeeds they stay in use. */
  maxAgeMs: number;
  /** At most one fetch per this period, whatever triggers it (unknown `kid`s, expiry, failures). */
  cooldownMs: number;
  /** A fetch that has not answered by then counts as failed (default 5 s). */
  timeoutMs?: number;
  log: Logger;
  /** Told how each fetch went (metrics). */
  onFetched?: (outcome: 'ok' | 'failed') => void;
}

/**
 * The environment's key set (JWKS), picked by `kid` with jose's `createLocalJWKSet`. Unlike jose's
 * `createRemoteJWKSet` it keeps serving the last good keys while the endpoint is down, also past
 * `maxAgeMs`, and counts failed fetches against the cooldown, so neither an outage nor a flood of
 * unknown `kid`s turns into a fetch per request.
 */
export function createRemoteKeySet({
  jwksUrl,
  issuer,
  maxAgeMs,
  cooldownMs,
  timeoutMs = 5_000,
  log,
  onFetched,
}: RemoteKeySetOptions): JWTVerifyGetKey {
  let keys: { getKey: ReturnType<typeof createLocalJWKSet>; fetchedAt: number } | undefined;
  let lastAttemptAt = Number.NEGATIVE_INFINITY;
  let lastAttemptFailed = false;
  let pending: Promise<void> | undefined;

  async function fetchKeys() {
    lastAttemptAt = Date.now();
    try {
      const response = await fetch(jwksUrl, {
        signal: AbortSignal.timeout(timeoutMs),
        // A redirect could point anywhere; the configured URL is the only source of keys.
        redirect: 'manual',
        headers: { accept: 'application/jwk-set+json, application/json' },
      });
      if (response.status !== 200) throw new Error(`The key set endpoint answered HTTP ${response.status}`);
      // createLocalJWKSet checks the shape and throws on anything that is not a key set.
      keys = { getKey: createLocalJWKSet((await response.json()) as JSONWebKeySet), fetchedAt: Date.now() };
      lastAttemptFailed = false;
      onFetched?.('ok');
    } catch (error) {
      lastAttemptFailed = true;
      onFetched?.('failed');
      log.warn(
        { err: error, jwksUrl, servingKeysFetchedAt: keys ? new Date(keys.fetchedAt) : null },
        keys ? 'Could not refresh the signing key set; still using the last one fetched' : 'Could not fetch the signing key set',
      );
    }
  }

  /**
   * Resolves after the fetch in flight, or a new one when the cooldown allows, with `true`; at once
   * with `false` when the cooldown forbids a fetch.
   */
  async function refresh(): Promise<boolean> {
    if (!pending && Date.now() - lastAttemptAt >= cooldownMs) {
      pending = fetchKeys().finally(() => {
        pending = undefined;
      });
    }
    if (!pending) return false;
    await pending;
    return true;
  }

  function unavailable(): never {
    throw new KeySetUnavailableError('The signing key set could not be fetched');
  }

  return async (header, token) => {
    // Frontegg names the signing key in every token; one that does not is not Frontegg's.
    if (typeof header.kid !== 'string' || header.kid.length === 0) {
      throw new joseErrors.JWSInvalid('The token names no signing key (kid)');
    }
    if (!keys) {
      await refresh();
      if (!keys) unavailable();
    } else if (Date.now() - keys.fetchedAt >= maxAgeMs) {
      // Stale: refresh in the background and answer with the keys we have.
      void refresh();
    }
    try {
      return await keys.getKey(header, token);
    } catch (error) {
      if (!(error instanceof joseErrors.JWKSNoMatchingKey)) throw error;
    }
    // A `kid` we do not hold: perhaps a key published since the last fetch.
    const before = keys;
    const fetched = await refresh();
    if (keys === before && lastAttemptFailed) unavailable();
    // Within the cooldown, a current token of our issuer, issued after the keys were fetched, may
    // be signed with a key published since: "retry" (503), not "signed out" (401), which would
    // sign people out for a rotation, and let anyone arm that with one made-up kid per cooldown.
    // Anything else names a key the issuer did not publish: refused below as unknown (401).
    if (!fetched && mayBeSignedWithNewKey(token, issuer, keys.fetchedAt)) unavailable();
    return keys.getKey(header, token);
  };
}
