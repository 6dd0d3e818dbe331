import { LRUCache } from 'lru-cache';

/** People whose buckets are not full, at most; beyond it the least recent is forgotten (given a full bucket). */
export const MAX_PEOPLE = 100_000;

export const DEFAULT_WRITES_PER_MINUTE = 60;

interface Bucket {
  tokens: number;
  /** `performance.now()` when `tokens` was last brought up to date. */
  at: number;
}

/**
 * A token bucket per person (user in organization) in this instance: `perMinute` writes a minute
 * on average, up to a third of it at once (the bucket's size). A bucket refills at `perMinute / 60`
 * tokens a second; once it would be full again it is dropped, as a full bucket is what a person
 * without one gets, so memory holds only those who wrote within the last refill time. `perMinute`
 * 0: no limit.
 */
export function createWriteLimit(perMinute: number) {
  const capacity = Math.max(1, Math.round(perMinute / 3));
  const perMs = perMinute / 60_000;
  const refillMs = Math.ceil(capacity / perMs);
  const buckets =
    perMinute > 0
      ? // Each write sets its person's entry again, so it lives `refillMs` past their last write.
        // One clock for the buckets and their expiry.
        new LRUCache<string, Bucket>({ max: MAX_PEOPLE, ttl: refillMs, ttlResolution: 0, perf: performance })
      : undefined;
  let purgedAt = performance.now();

  return {
    /**
     * Takes one write from `person`'s bucket: 0 when it had one, else the whole seconds until it
     * will (and nothing is taken).
     */
    take(person: string): number {
      if (!buckets) return 0;
      const now = performance.now();
      // Once a refill time: the buckets full by now go (each goes once, so this costs little a write).
      if (now - purgedAt >= refillMs) {
        purgedAt = now;
        buckets.purgeStale();
      }
      const bucket = buckets.get(person);
      const tokens = bucket ? Math.min(capacity, bucket.tokens + (now - bucket.at) * perMs) : capacity;
      if (tokens < 1) return Math.max(1, Math.ceil((1 - tokens) / perMs / 1000));
      buckets.set(person, { tokens: tokens - 1, at: now });
      return 0;
    },
    /** People with a bucket kept: not full, or full since the last purge. */
    get people() {
      return buckets?.size ?? 0;
    },
  };
}

export type WriteLimit = ReturnType<typeof createWriteLimit>;
