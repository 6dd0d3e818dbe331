import { LRUCache } from 'lru-cache';
import type { IdentityClaims } from '../db/provisioning.js';
import type { Member } from './context.js';

export interface MemberCacheOptions {
  /** How many people's rows to remember (least recently used first out); 0 remembers none. */
  maxEntries: number;
  /** How long a provisioning counts as recent; 0 provisions on every request. */
  ttlMs: number;
}

export const DEFAULT_MEMBER_CACHE = { maxEntries: 10_000, ttlMs: 60_000 } satisfies MemberCacheOptions;

/**
 * The rows provisioned recently for each person in each organization, with the claims they were
 * provisioned from. A token whose claims differ in anything provisioning writes (roles, email,
 * name, picture, verified flag) finds no entry and provisions again at once, so a demotion is
 * never answered from here. What changes in the database without a new token (a membership
 * deactivated by an operator) is seen once the entry is older than `ttlMs`.
 *
 * It also knows which provisionings are under way in this process, so that concurrent first
 * requests of one person (a batch, or a page firing several calls) wait for one of them instead
 * of queueing in the database behind its row locks.
 */
export function createMemberCache({ maxEntries, ttlMs }: MemberCacheOptions = DEFAULT_MEMBER_CACHE) {
  const remembered =
    maxEntries > 0 && ttlMs > 0
      ? new LRUCache<string, { claims: string; member: Member }>({ max: maxEntries, ttl: ttlMs })
      : undefined;
  const underWay = new Map<string, Promise<Member | undefined>>();

  return {
    /** The rows provisioned recently from exactly these claims. */
    get(identity: IdentityClaims): Member | undefined {
      const entry = remembered?.get(personKey(identity));
      return entry && entry.claims === claimsKey(identity) ? entry.member : undefined;
    },

    /**
     * A provisioning of these claims under way in this process: resolves with its rows once it
     * has committed, or `undefined` when it rolled back.
     */
    underWay(identity: IdentityClaims): Promise<Member | undefined> | undefined {
      return underWay.get(claimsKey(identity));
    },

    /**
     * Marks a provisioning of these claims as under way; the function returned ends it, with the
     * committed rows (remembered from then on) or `undefined`. Returns `undefined` when one is
     * under way already.
     */
    begin(identity: IdentityClaims): ((member: Member | undefined) => void) | undefined {
      const claims = claimsKey(identity);
      if (underWay.has(claims)) return undefined;
      let settle!: (member: Member | undefined) => void;
      underWay.set(claims, new Promise((resolve) => (settle = resolve)));
      return (member) => {
        underWay.delete(claims);
        if (member) remembered?.set(personKey(identity), { claims, member: freezeMember(member) });
        settle(member);
      };
    },

    /** How many people are remembered now. */
    get size() {
      return remembered?.size ?? 0;
    },
  };
}

export type MemberCache = ReturnType<typeof createMemberCache>;

const personKey = (identity: IdentityClaims) => `${identity.tenantId}\u0000${identity.userId}`;

/**
 * Everything provisioning writes from a token. An absent claim (`undefined`, left out by JSON)
 * and `null` differ, as they do for provisioning.
 */
function claimsKey(identity: IdentityClaims): string {
  let key = claimsKeys.get(identity);
  if (key === undefined) {
    const { userId, tenantId, email, name, avatarUrl, emailVerified, roles } = identity;
    key = JSON.stringify({ userId, tenantId, email, name, avatarUrl, emailVerified, roles });
    claimsKeys.set(identity, key);
  }
  return key;
}

// A verified token's identity is one frozen object, shared by every request that presents the
// token again, so its key is worked out once.
const claimsKeys = new WeakMap<IdentityClaims, string>();

/** Remembered rows are handed to every later request; none of them may change what others see. */
function freezeMember(member: Member): Member {
  Object.freeze(member.user.profileData);
  for (const row of [member.user, member.organization, member.membership]) Object.freeze(row);
  return Object.freeze(member);
}
