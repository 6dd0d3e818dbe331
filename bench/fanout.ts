// Fan-out of live chat events: how long from a `sendMessage` call to its `message.created`
// arriving on each of the sender's open streams (`chat.events`), with 100 subscribers of one
// organization open at once over real HTTP, spread over the instances given (behind a load
// balancer, a person's tabs land on different instances; the event crosses between them through
// PostgreSQL's LISTEN/NOTIFY).
import { createApiClient } from '../client/index.js';

export interface FanOutResult {
  people: number;
  tabsPerPerson: number;
  instances: number;
  rounds: number;
  /** Send-to-receipt latencies measured, one per tab per message. */
  samples: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Receipts that never came. */
  missing: number;
}

/**
 * `tokens` are people of one organization. Each opens `tabsPerPerson` streams, round robin over
 * `urls`; then, `rounds` times, every person sends one message at once, through the first URL,
 * and each tab's receipt of it is timed from just before the call.
 */
export async function measureFanOut({
  urls,
  tokens,
  tabsPerPerson,
  rounds,
}: {
  urls: string[];
  tokens: string[];
  tabsPerPerson: number;
  rounds: number;
}): Promise<FanOutResult> {
  const sentAt = new Map<string, number>();
  const latencies: number[] = [];
  const pending = new Set<string>();
  let wake = () => {};

  const people = await Promise.all(
    tokens.map(async (token, person) => {
      const writer = createApiClient({ url: `${urls[0]}/trpc`, getToken: () => token });
      const session = await writer.chat.getActiveSession.query();
      const tabs = await Promise.all(
        Array.from({ length: tabsPerPerson }, (_, tab) => {
          const client = createApiClient({ url: `${urls[(person * tabsPerPerson + tab) % urls.length]}/trpc`, getToken: () => token });
          return new Promise<{ unsubscribe(): void }>((resolve, reject) => {
            const subscription = client.chat.events.subscribe(undefined, {
              onStarted: () => resolve(subscription),
              onError: reject,
              onData: ({ data }) => {
                if (data.type !== 'message.created') return;
                const started = sentAt.get(data.message.content);
                if (started === undefined) return;
                latencies.push(performance.now() - started);
                pending.delete(`${data.message.content}/${tab}`);
                if (pending.size === 0) wake();
              },
            });
          });
        }),
      );
      return { writer, session, tabs };
    }),
  );

  let missing = 0;
  for (let round = 0; round < rounds; round += 1) {
    const done = new Promise<void>((resolve) => (wake = resolve));
    for (const [person] of people.entries()) {
      for (let tab = 0; tab < tabsPerPerson; tab += 1) pending.add(`round ${round} person ${person}/${tab}`);
    }
    await Promise.all(
      people.map(({ writer, session }, person) => {
        const content = `round ${round} person ${person}`;
        sentAt.set(content, performance.now());
        return writer.chat.sendMessage.mutate({ sessionId: session.id, content });
      }),
    );
    const timedOut = await Promise.race([done.then(() => false), new Promise<boolean>((resolve) => setTimeout(resolve, 10_000, true))]);
    if (timedOut) {
      missing += pending.size;
      pending.clear();
    }
  }
  for (const { tabs } of people) for (const tab of tabs) tab.unsubscribe();

  const sorted = [...latencies].sort((a, b) => a - b);
  const at = (fraction: number) => sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))] ?? Number.NaN;
  return {
    people: tokens.length,
    tabsPerPerson,
    instances: urls.length,
    rounds,
    samples: sorted.length,
    p50Ms: at(0.5),
    p99Ms: at(0.99),
    maxMs: sorted.at(-1) ?? Number.NaN,
    missing,
  };
}
