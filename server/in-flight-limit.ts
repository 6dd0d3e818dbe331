import { MAX_BATCH_SIZE } from '../client/limits.js';

/**
 * How many calls of one kind each person may have in progress in this instance. A person's calls
 * beyond it are refused at once rather than queued, so one person's script cannot take the
 * database pool, or the memory of large answers, from everyone else.
 */
export function createInFlightLimit(perPerson: number) {
  const inFlight = new Map<string, number>();
  return {
    /** Counts a call of `person` in; `undefined` when they are at the limit. Call the result when it ends. */
    enter(person: string): (() => void) | undefined {
      const current = inFlight.get(person) ?? 0;
      if (current >= perPerson) return undefined;
      inFlight.set(person, current + 1);
      let left = false;
      return () => {
        if (left) return;
        left = true;
        const remaining = (inFlight.get(person) ?? 1) - 1;
        // Only people with calls in progress are kept: the map is as large as the work under way.
        if (remaining === 0) inFlight.delete(person);
        else inFlight.set(person, remaining);
      };
    },
    /** How many people have calls in progress now. */
    get people() {
      return inFlight.size;
    },
  };
}

export type InFlightLimit = ReturnType<typeof createInFlightLimit>;

// An ordinary batch of heavy calls (a frontend's writes, say) always fits.
export const DEFAULT_HEAVY_CALLS_PER_PERSON = MAX_BATCH_SIZE;
