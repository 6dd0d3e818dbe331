// Fan-out of live chat events: how long from a `sendMessage` call to its `message.created`
// arriving on each of the sender's open streams (`chat.events`), with 100 subscribers of one
// organization open at once over real HTTP, spread over the instances given (behind a load
// balancer, a person's tabs land on different instances; the event crosses between them through
// PostgreSQL's LISTEN/NOTIFY).
import { createApiClient } from '../client/index.js';

export interface Latencies {
  /** Send-to-receipt latencies measured, one per tab per message. */
  samples: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** The `sendMessage` calls' own answers, for comparison. */
  answeredP50Ms: number;
}

export interface FanOutResult {
  people: number;
  tabsPerPerson: number;
  instances: number;
  rounds: number;
  /** One person sends at a time (taking turns): the latency of delivery itself. */
  oneAtATime: Latencies;
  /** Every person sends at once, each round: delivery while the database is busy with the writes. */
  allAtOnce: Latencies;
  /** Receipts that never came. */
  missing: number;
}

/**
 * `tokens` are people of one organization. Each opens `tabsPerPerson` streams, round robin over
 * `urls`. Then each person sends `rounds` messages one at a time, taking turns; then, `rounds`
 * times, every person sends one message at once. Messages go through the first URL, and each
 * tab's receipt of one is timed from just before the call.
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
  let latencies: number[] = [];
  const pending = new Set<string>();
  const streamErrors: unknown[] = [];
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
              // tRPC reports a refused stream started, then its error: counted, the run fails.
              onError: (error) => {
                streamErrors.push(error);
                reject(error);
              },
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
  /** Sends one message for each of `senders` at once; resolves when every tab has it (or after 10 s). */
  async function send(senders: number[], label: string, answered: number[]) {
    const done = new Promise<void>((resolve) => (wake = resolve));
    for (const person of senders) {
      for (let tab = 0; tab < tabsPerPerson; tab += 1) pending.add(`${label} person ${person}/${tab}`);
    }
    await Promise.all(
      senders.map(async (person) => {
        const { writer, session } = people[person]!;
        const content = `${label} person ${person}`;
        const started = performance.now();
        sentAt.set(content, started);
        await writer.chat.sendMessage.mutate({ sessionId: session.id, content });
        answered.push(performance.now() - started);
      }),
    );
    const timedOut = await Promise.race([done.then(() => false), new Promise<boolean>((resolve) => setTimeout(resolve, 10_000, true))]);
    if (timedOut) {
      missing += pending.size;
      pending.clear();
    }
  }

  const everyone = people.map((_, person) => person);
  const measure = async (rounds: { senders: number[]; label: string }[]): Promise<Latencies> => {
    latencies = [];
    const answered: number[] = [];
    for (const { senders, label } of rounds) await send(senders, label, answered);
    return { ...summary(latencies), answeredP50Ms: summary(answered).p50Ms };
  };
  const oneAtATime = await measure(
    Array.from({ length: rounds * people.length }, (_, turn) => ({ senders: [turn % people.length], label: `turn ${turn}` })),
  );
  const allAtOnce = await measure(Array.from({ length: rounds }, (_, round) => ({ senders: everyone, label: `round ${round}` })));
  for (const { tabs } of people) for (const tab of tabs) tab.unsubscribe();
  if (streamErrors.length > 0) throw new Error(`${streamErrors.length} event streams failed: ${String(streamErrors[0])}`);
  return { people: tokens.length, tabsPerPerson, instances: urls.length, rounds, oneAtATime, allAtOnce, missing };
}

function summary(values: number[]) {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (fraction: number) => sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))] ?? Number.NaN;
  return { samples: sorted.length, p50Ms: at(0.5), p99Ms: at(0.99), maxMs: sorted.at(-1) ?? Number.NaN };
}
