import { createHash, randomUUID } from 'node:crypto';
import { link, mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import {
  type CryptoKey,
  type JWK,
  type JWTVerifyGetKey,
  SignJWT,
  calculateJwkThumbprint,
  createLocalJWKSet,
  exportJWK,
  generateKeyPair,
  importJWK,
} from 'jose';

/**
 * Local identity mode: with no Frontegg environment configured (and not in production), the
 * server trusts only a key pair kept on disk, and `npm run token` signs tokens with it.
 */
export const LOCAL_ISSUER = 'urn:local-identity';
export const LOCAL_AUDIENCE = 'urn:local-identity:api';

export interface LocalSigningKey {
  kid: string;
  privateKey: CryptoKey;
  publicJwk: JWK;
}

interface StoredKeyPair {
  privateJwk: JWK;
  publicJwk: JWK;
}

/** Reads the key pair at `file`, creating it once; concurrent callers all end up with the same key. */
export async function loadOrCreateLocalSigningKey(file: string): Promise<LocalSigningKey> {
  const stored = (await readKeyPair(file)) ?? (await createKeyPair(file));
  const kid = stored.publicJwk.kid;
  if (!kid) throw new Error(`${file} holds a key without a kid; delete it to create a new one`);
  return {
    kid,
    privateKey: (await importJWK(stored.privateJwk, 'RS256')) as CryptoKey,
    publicJwk: stored.publicJwk,
  };
}

async function readKeyPair(file: string): Promise<StoredKeyPair | null> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as StoredKeyPair;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
}

async function createKeyPair(file: string): Promise<StoredKeyPair> {
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  const publicJwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(publicJwk);
  const pair: StoredKeyPair = {
    privateJwk: { ...(await exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' },
    publicJwk: { ...publicJwk, kid, alg: 'RS256', use: 'sig' },
  };
  await mkdir(dirname(file), { recursive: true });
  // Written aside, then linked into place: link fails if the file exists, so a concurrent
  // creator's key is never overwritten and no reader sees a half-written file.
  const scratch = `${file}.${randomUUID()}.tmp`;
  await writeFile(scratch, JSON.stringify(pair), { mode: 0o600 });
  try {
    await link(scratch, file);
    return pair;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    return (await readKeyPair(file)) as StoredKeyPair;
  } finally {
    await unlink(scratch);
  }
}

export function createLocalKeySet(key: LocalSigningKey): JWTVerifyGetKey {
  return createLocalJWKSet({ keys: [key.publicJwk] });
}

export interface LocalTokenRequest {
  email: string;
  tenantId: string;
  roles: string[];
  name?: string | undefined;
  /** Defaults to an id derived from the email, so the same email is always the same user. */
  userId?: string | undefined;
  expiresInSeconds: number;
}

/** A token shaped like a Frontegg user token (see shared/FRONTEGG.md), signed by the local key. */
export function mintLocalToken(key: LocalSigningKey, request: LocalTokenRequest): Promise<string> {
  const userId =
    request.userId ?? `local-${createHash('sha256').update(request.email.toLowerCase()).digest('hex').slice(0, 24)}`;
  return new SignJWT({
    name: request.name ?? request.email.split('@')[0],
    email: request.email,
    email_verified: true,
    roles: request.roles,
    permissions: [],
    tenantId: request.tenantId,
    tenantIds: [request.tenantId],
    type: 'userToken',
  })
    .setProtectedHeader({ alg: 'RS256', kid: key.kid, typ: 'JWT' })
    .setSubject(userId)
    .setIssuer(LOCAL_ISSUER)
    .setAudience(LOCAL_AUDIENCE)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + request.expiresInSeconds)
    .sign(key.privateKey);
}
