import { vi } from 'vitest';
import type { ApiClient, ChatEvent } from '../../client/index.js';

/** How long after "connected" a refusal would have arrived: it is sent right behind it. */
const REFUSAL_GRACE_MS = 10;

export interface ReceivedEvent {
  id: string;
  data: ChatEvent;
}

/**
 * Subscribes `client` to `chat.events` as a frontend does, keeping what arrives: the events, the
 * errors and how many times the stream reported itself connected.
 */
export function watchEvents(client: ApiClient, input?: { lastEventId?: string | null }) {
  const received: ReceivedEvent[] = [];
  const errors: unknown[] = [];
  let starts = 0;
  const subscription = client.chat.events.subscribe(input, {
    onStarted: () => {
      starts += 1;
    },
    onData: (event) => void received.push(event),
    onError: (error) => void errors.push(error),
  });
  /** Resolves once `check` passes on what has arrived (it throws until then). */
  const until = (check: () => void, timeout = 5_000) => vi.waitFor(check, { timeout, interval: 5 });
  return {
    received,
    errors,
    /** The types of the events received, in order. */
    types: () => received.map((event) => event.data.type),
    get starts() {
      return starts;
    },
    until,
    /**
     * Resolves once the stream has reported itself connected (tRPC's `onStarted`) and was not
     * refused: tRPC reports a refused stream connected too, then its error right after.
     */
    connected: async () => {
      await until(() => {
        if (starts === 0) throw new Error('not connected yet');
      });
      await new Promise((resolve) => setTimeout(resolve, REFUSAL_GRACE_MS));
      if (errors.length > 0) throw errors[0];
    },
    /** Resolves once `count` events have arrived. */
    atLeast: (count: number, timeout?: number) =>
      until(() => {
        if (received.length < count) throw new Error(`${received.length} of ${count} events so far`);
      }, timeout),
    close: () => subscription.unsubscribe(),
  };
}

export type EventWatch = ReturnType<typeof watchEvents>;
