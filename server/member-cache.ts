import { LRUCache } from 'lru-cache';
import { type MembershipChange, changeConcerns } from '../db/chat-events.js';
import type { IdentityClaims, ProvisionedIdentity } from '../db/provisioning.js';

/** The caller's rows, as `protectedProcedure` hands them to procedures. */
export type Member = Omit<ProvisionedIdentity, 'created'>;

export interface MemberCacheOptions {
  /** How many people's rows to remember (least recently used first out); 0 remembers none. */
  maxEntries: number;
  /** How long a provisioning counts as recent; 0 provisions on every request. */
  ttlMs: number;
  /** The most memory the remembered rows may take, estimated, as rows vary in size (default 16 MiB). */
  maxBytes?: number;
}

export const DEFAULT_MEMBER_CACHE = {
  maxEntries: 10_000,
  ttlMs: 60_000,
  maxBytes: 16 * 1024 * 1024,
} satisfies MemberCacheOptions;

interface Provisioning {
  claims: IdentityClaims;
  member: Promise<Member>;
}

/**
 * The rows provisioned recently for each person in each organization, with the claims they were
 * provisioned from. A token whose claims differ in anything provisioning writes (roles, email,
 * name, picture, verified flag) finds no entry and provisions again at once, so a demotion is never
 * answered from here; a new token with the same claims (a refresh) does not, whatever its `iat`.
 * What Frontegg's webhooks change is forgotten on every instance at once (`forget`); what changes
 * in the database without either (a membership deactivated by an operator) is seen once the entry
 * is older than `ttlMs`.
 */
export function createMemberCache({
  maxEntries,
  ttlMs,
  maxBytes = DEFAULT_MEMBER_CACHE.maxBytes,
}: MemberCacheOptions = DEFAULT_MEMBER_CACHE) {
  const remembered =
    maxEntries > 0 && ttlMs > 0
      ? new LRUCache<string, { claims: IdentityClaims; member: Member }>({
          max: maxEntries,
          ttl: ttlMs,
          maxSize: maxBytes,
          // Strings take two bytes a character at most; the rows and claims are mostly strings.
          sizeCalculation: (entry) => 2 * JSON.stringify(entry).length + 512,
        })
      : undefined;
  // Concurrent first requests of one person (a batch, a page firing several calls) share one
  // provisioning instead of queueing in the database behind its row locks.
  const underWay = new Map<string, Provisioning>();
  // Raised by `forget`: a provisioning that began before then may have read what changed since.
  let generation = 0;

  return {
    /**
     * The caller's rows: remembered when they were provisioned recently from the same claims, else
     * those of a provisioning of the same claims already under way in this process, else what
     * `provision` makes (then remembered). A failed provisioning is remembered by nobody: every
     * request waiting on it gets its error.
     */
    async getOrProvision(identity: IdentityClaims, provision: () => Promise<Member>): Promise<Member> {
      const person = personKey(identity);
      const entry = remembered?.get(person);
      if (entry && sameClaims(entry.claims, identity)) return entry.member;
      const pending = underWay.get(person);
      if (pending && sameClaims(pending.claims, identity)) return pending.member;

      const startedIn = generation;
      const member = provision().then((provisioned) => {
        const member = freezeMember(provisioned);
        if (generation === startedIn) remembered?.set(person, { claims: identity, member });
        return member;
      });
      const provisioning = { claims: identity, member };
      underWay.set(person, provisioning);
      try {
        return await member;
      } finally {
        // A later provisioning of other claims may have taken the place meanwhile.
        if (underWay.get(person) === provisioning) underWay.delete(person);
      }
    },

    /**
     * Forgets the rows of the memberships that changed (`{}`: everyone's), and the provisionings
     * of them under way: the next request of each of those people reads the database.
     */
    forget(change: MembershipChange) {
      generation += 1;
      const concerned = (claims: IdentityClaims) => changeConcerns(change, { userId: claims.userId, organizationId: claims.tenantId });
      for (const [person, entry] of [...(remembered?.entries() ?? [])]) if (concerned(entry.claims)) remembered?.delete(person);
      for (const [person, provisioning] of [...underWay]) if (concerned(provisioning.claims)) underWay.delete(person);
    },

    /** How many people are remembered now. */
    get size() {
      return remembered?.size ?? 0;
    },
  };
}

export type MemberCache = ReturnType<typeof createMemberCache>;

/** One person in one organization: the unit the caches and per-person limits count. Ids hold no NUL. */
export const personKey = (identity: IdentityClaims) => `${identity.tenantId}\u0000${identity.userId}`;

/**
 * Whether two identities carry the same values for everything provisioning writes. An absent
 * claim (`undefined`) and `null` differ, as they do for provisioning.
 */
function sameClaims(a: IdentityClaims, b: IdentityClaims): boolean {
  return (
    a.userId === b.userId &&
    a.tenantId === b.tenantId &&
    a.email === b.email &&
    a.name === b.name &&
    a.avatarUrl === b.avatarUrl &&
    a.emailVerified === b.emailVerified &&
    sameRoles(a.roles, b.roles)
  );
}

function sameRoles(a: readonly string[] | undefined, b: readonly string[] | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return a.length === b.length && a.every((role, index) => role === b[index]);
}

/** The rows are handed to every request that shares them; none of them may change what others see. */
function freezeMember(member: Member): Member {
  Object.freeze(member.user.profileData);
  for (const row of [member.user, member.organization, member.membership]) Object.freeze(row);
  return Object.freeze(member);
}
