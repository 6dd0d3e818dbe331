import { randomUUID } from 'node:crypto';
import { type LocalSigningKey, mintLocalToken } from '../server/auth/local-identity.js';

export interface BenchUser {
  userId: string;
  tenantId: string;
}

/** `count` new people spread over tenants of `perTenant` people each. */
export function newUsers(count: number, perTenant: number): BenchUser[] {
  const tenants = Array.from({ length: Math.ceil(count / perTenant) }, () => randomUUID());
  return Array.from({ length: count }, (_, index) => ({
    userId: randomUUID(),
    tenantId: tenants[Math.floor(index / perTenant)]!,
  }));
}

/**
 * A user token for `user`, valid for an hour plus `nonce` seconds: tokens of one person that
 * differ only in `nonce` are distinct strings, each needing its own signature check.
 */
export function tokenFor(key: LocalSigningKey, user: BenchUser, nonce = 0): Promise<string> {
  return mintLocalToken(key, {
    userId: user.userId,
    email: `${user.userId}@bench.example.com`,
    name: 'Bench User',
    tenantId: user.tenantId,
    roles: ['Admin'],
    expiresInSeconds: 3_600 + nonce,
  });
}
