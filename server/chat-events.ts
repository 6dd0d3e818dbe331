import { TRPCError, type TrackedEnvelope, tracked } from '@trpc/server';
import { sql } from 'drizzle-orm';
import {
  CHAT_EVENTS_CHANNEL,
  type ChatEvent,
  type LoggedChatEvent,
  type MembershipChange,
  changeConcerns,
  deleteEventsRecordedBefore,
  eventStreamKey,
  getEventsAfter,
  getEventStreamState,
  parseNotification,
} from '../db/chat-events.js';
import type { SessionOwner } from '../db/chat.js';
import type { Database, DatabaseHandle, Listener } from '../db/database.js';
import { isDatabaseUnavailable } from '../db/errors.js';
import { AccessTokenError } from './auth/access-token.js';
import { createInFlightLimit } from './in-flight-limit.js';
import type { Logger } from './logger.js';
import { unavailable } from './trpc.js';

export interface ChatEventHubOptions {
  db: Database;
  listen: DatabaseHandle['listen'];
  log: Logger;
  /** Events are kept this long; a subscriber that comes back later than that gets `resync`. */
  retentionMs: number;
  /** Streams one person may have open at once in this instance (`SUBSCRIPTIONS_PER_PERSON`). */
  subscriptionsPerPerson: number;
  /**
   * Streams this instance holds at once (`SUBSCRIPTIONS_PER_INSTANCE`); one more is answered 503,
   * so that its client reconnects, through the load balancer, to another instance.
   */
  subscriptionsPerInstance: number;
  /** How often the streams of a member check that the membership is still active. */
  membershipCheckMs: number;
  /** How often this instance checks that its LISTEN connection still hears (default 15 s). */
  listenerHeartbeatMs?: number;
  /**
   * Told when memberships changed on any instance (Frontegg's webhooks), and with `{}` (everyone)
   * whenever listening starts again, as notifications sent meanwhile are lost. The streams of the
   * members concerned check their membership at once, and end if it is no longer active.
   */
  onMembershipChanged?: (change: MembershipChange) => void;
}

export const DEFAULT_EVENT_RETENTION_MS = 60 * 60_000;
export const DEFAULT_SUBSCRIPTIONS_PER_PERSON = 20;
/** Each open stream holds about 80 KB (mostly tRPC's SSE machinery): 5,000 are about 400 MB. */
export const DEFAULT_SUBSCRIPTIONS_PER_INSTANCE = 5_000;

/**
 * Events read from the database at a time, by a stream catching up or a subscriber replaying: at
 * most this many, and this much message text (at least one event).
 */
const PAGE_SIZE = 50;
const PAGE_MAX_BYTES = 64 * 1024;
/**
 * The newest events a member's stream keeps in memory for its subscribers: at most this many and
 * this much text per member, and this much for all members of the instance together.
 */
const RECENT_MAX_EVENTS = 32;
const RECENT_MAX_BYTES = 256 * 1024;
const RECENT_TOTAL_MAX_BYTES = 64 * 1024 * 1024;
/** A subscription tRPC has not started reading by then was abandoned (its call timed out, say). */
const UNSTARTED_LIMIT_MS = 30_000;
const PRUNE_EVERY_MS = 60_000;
const FETCH_RETRY_MS = 1_000;
const MAX_TIMER_MS = 2 ** 31 - 1;
const HEARTBEAT_PAYLOAD = 'heartbeat';
const RESYNC: ChatEvent = { type: 'resync' };

/**
 * Live chat events for `chat.events`: one LISTEN connection per instance hears which member's
 * events were recorded (`db/chat-events.ts`), one stream per member with subscribers here reads
 * them from the database once and hands them to each of that member's subscriptions (tabs).
 *
 * Memory stays bounded whatever subscribers do: a stream keeps only its newest events, and a
 * subscriber holds only its position. One that reads slowly, or reconnects with an older
 * `lastEventId`, reads its own pages from the database, so nothing queues up for it.
 */
export function createChatEventHub(options: ChatEventHubOptions) {
  const { db, log } = options;
  const heartbeatMs = options.listenerHeartbeatMs ?? 15_000;
  /** By stream key; a list, as two members could share a key (a digest). */
  const streams = new Map<string, MemberStream[]>();
  const perPerson = createInFlightLimit(options.subscriptionsPerPerson);
  const memory: RecentMemory = { bytes: 0, limit: RECENT_TOTAL_MAX_BYTES };
  const sent: SentCount = { events: 0 };
  let open = 0;
  let listener: Listener | undefined;
  let lastHeardAt = Date.now();
  let reconnecting = false;
  let closed = false;
  const timers: NodeJS.Timeout[] = [];

  function onNotification(payload: string) {
    lastHeardAt = Date.now();
    const notification = parseNotification(payload);
    if (notification?.kind === 'events') {
      for (const stream of streams.get(notification.key) ?? []) stream.heard(notification.seq);
    } else if (notification?.kind === 'members') {
      membershipChanged(notification.change);
    }
  }

  function membershipChanged(change: MembershipChange) {
    options.onMembershipChanged?.(change);
    for (const list of streams.values()) {
      for (const stream of list) if (changeConcerns(change, stream.owner)) void stream.checkMembership();
    }
  }

  /**
   * Notifications sent while not listening are lost: every stream reads what it may have missed,
   * and what is remembered of memberships is forgotten.
   */
  function onListening() {
    lastHeardAt = Date.now();
    for (const list of streams.values()) for (const stream of list) stream.catchUp();
    membershipChanged({});
  }

  async function startListening() {
    const started = await options.listen(CHAT_EVENTS_CHANNEL, onNotification, onListening);
    if (closed) await started.close();
    else listener = started;
  }

  /**
   * Every instance sends a heartbeat on the channel; a listener that has heard nothing for three
   * of them is replaced. That finds a connection whose network path died without a word (TCP
   * would take many minutes) and one that postgres.js gave up reconnecting during an outage.
   */
  async function checkListener() {
    await db.execute(sql`select pg_notify(${CHAT_EVENTS_CHANNEL}, ${HEARTBEAT_PAYLOAD})`).catch(() => {});
    if (closed || reconnecting || Date.now() - lastHeardAt < 3 * heartbeatMs) return;
    reconnecting = true;
    log.warn({ silentMs: Date.now() - lastHeardAt }, 'Chat events listener heard nothing; reconnecting it');
    try {
      await listener?.close().catch(() => {});
      listener = undefined;
      await startListening();
    } catch (error) {
      log.warn({ err: error }, 'Chat events listener could not reconnect; trying again at the next heartbeat');
    } finally {
      reconnecting = false;
    }
  }

  async function prune() {
    try {
      const deleted = await deleteEventsRecordedBefore(db, new Date(Date.now() - options.retentionMs));
      if (deleted > 0) log.debug({ deleted }, 'Deleted chat events past their retention');
    } catch (error) {
      log.warn({ err: error }, 'Could not delete old chat events; trying again later');
    }
  }

  function streamFor(owner: SessionOwner): MemberStream {
    const key = eventStreamKey(owner);
    const list = streams.get(key) ?? [];
    let stream = list.find((candidate) => candidate.is(owner));
    if (!stream) {
      stream = new MemberStream(owner, {
        db,
        log,
        memory,
        membershipCheckMs: options.membershipCheckMs,
        onEmpty: (emptied) => {
          const remaining = (streams.get(key) ?? []).filter((other) => other !== emptied);
          if (remaining.length > 0) streams.set(key, remaining);
          else streams.delete(key);
        },
      });
      streams.set(key, [...list, stream]);
    }
    return stream;
  }

  return {
    /** Starts listening; with the timers that keep the listener alive and delete old events. */
    async start() {
      await startListening();
      timers.push(
        setInterval(() => void checkListener(), heartbeatMs).unref(),
        setInterval(() => void prune(), PRUNE_EVERY_MS).unref(),
      );
      void prune();
    },

    /**
     * The caller's events from `lastEventId` on (see `chat.events`). Resolves once the
     * subscription is registered, so that a change made as soon as the client sees the stream
     * connected is delivered.
     */
    async subscribe({
      owner,
      lastEventId,
      expiresAt,
      signal,
    }: {
      owner: SessionOwner;
      lastEventId: string | null | undefined;
      /** The stream ends with UNAUTHORIZED at the `exp` of the token that opened it. */
      expiresAt: Date;
      signal: AbortSignal | undefined;
    }): Promise<AsyncIterable<TrackedEnvelope<ChatEvent>>> {
      if (closed) throw restarting();
      if (open >= options.subscriptionsPerInstance) {
        throw new TRPCError({ code: 'SERVICE_UNAVAILABLE', message: 'This server holds all the event streams it takes; reconnect' });
      }
      const leavePerson = perPerson.enter(`${owner.organizationId}\u0000${owner.userId}`);
      if (!leavePerson) {
        throw new TRPCError({
          code: 'TOO_MANY_REQUESTS',
          message: `You have ${options.subscriptionsPerPerson} event streams open; close one first`,
        });
      }
      open += 1;
      const leave = () => {
        open -= 1;
        leavePerson();
      };
      const stream = streamFor(owner);
      const subscriber = new Subscriber(stream, expiresAt, signal, leave, sent);
      try {
        await stream.ready;
        const start = await stream.startingPoint(lastEventId);
        if (signal?.aborted) throw new TRPCError({ code: 'CLIENT_CLOSED_REQUEST', message: 'The client went away' });
        return subscriber.deliver(start);
      } catch (error) {
        subscriber.detach();
        throw isDatabaseUnavailable(error) ? unavailable(error) : error;
      }
    },

    /**
     * Streams (members with subscribers here), subscriptions open now, the bytes their recent
     * events take, and the events sent to subscribers since the hub started.
     */
    stats() {
      let members = 0;
      let subscriptions = 0;
      for (const list of streams.values()) {
        for (const stream of list) {
          members += 1;
          subscriptions += stream.size;
        }
      }
      return { members, subscriptions, recentBytes: memory.bytes, eventsSent: sent.events };
    },

    /** Ends every subscription with SERVICE_UNAVAILABLE (clients reconnect elsewhere) and stops listening. */
    async close() {
      closed = true;
      for (const timer of timers) clearInterval(timer);
      for (const list of [...streams.values()]) for (const stream of list) stream.endAll(restarting());
      await listener?.close().catch(() => {});
    },
  };
}

export type ChatEventHub = ReturnType<typeof createChatEventHub>;

/** What the recent events of all streams of an instance take, and may take. */
interface RecentMemory {
  bytes: number;
  limit: number;
}

/** Events handed to subscribers, in all. */
interface SentCount {
  events: number;
}

interface StreamDeps {
  db: Database;
  log: Logger;
  memory: RecentMemory;
  membershipCheckMs: number;
  onEmpty: (stream: MemberStream) => void;
}

type StartingPoint = { position: number; resync: boolean };

/** One member's events as this instance has read them, shared by that member's subscribers here. */
class MemberStream {
  /** The newest event id read; subscribers at or past it wait. */
  fetchedTo = 0;
  readonly ready: Promise<void>;
  private readonly subscribers = new Set<Subscriber>();
  private notifiedTo = 0;
  private probe = false;
  private fetching = false;
  private initialized = false;
  private stopped = false;
  /** The newest events read, in order and without gaps, ending at `fetchedTo`. */
  private recent: LoggedChatEvent[] = [];
  private recentBytes = 0;
  private readonly membershipTimer: NodeJS.Timeout;
  /** Starts each event id: an id of another member's stream is one this stream never gave. */
  private readonly tag: string;

  constructor(
    readonly owner: SessionOwner,
    private readonly deps: StreamDeps,
  ) {
    this.tag = eventStreamKey(owner).slice(0, 8);
    // Read after the stream is registered: an event committed later is notified to it.
    this.ready = getEventStreamState(deps.db, owner).then(
      (state) => {
        // The member cache may still hold a membership deactivated since: a new stream checks.
        if (!state?.isActive) {
          this.stop();
          throw deactivated();
        }
        this.fetchedTo = state.lastEventSeq;
        this.initialized = true;
        void this.fetch();
      },
      (error: unknown) => {
        this.stop();
        throw error;
      },
    );
    // Handled by each subscriber that awaits it; this only keeps an early failure from being unhandled.
    this.ready.catch(() => {});
    this.membershipTimer = setInterval(() => void this.checkMembership(), deps.membershipCheckMs).unref();
  }

  is(owner: SessionOwner) {
    return owner.userId === this.owner.userId && owner.organizationId === this.owner.organizationId;
  }

  get size() {
    return this.subscribers.size;
  }

  add(subscriber: Subscriber) {
    this.subscribers.add(subscriber);
  }

  remove(subscriber: Subscriber) {
    this.subscribers.delete(subscriber);
    if (this.subscribers.size === 0) this.stop();
  }

  /** A notification: the member's events up to `seq` are committed. */
  heard(seq: number) {
    if (seq <= this.notifiedTo) return;
    this.notifiedTo = seq;
    void this.fetch();
  }

  /** Reads whatever was recorded since `fetchedTo`, notified or not. */
  catchUp() {
    this.probe = true;
    void this.fetch();
  }

  /** The id of the member's newest event, as the database has it now. */
  async latest(): Promise<number> {
    return (await getEventStreamState(this.deps.db, this.owner))?.lastEventSeq ?? 0;
  }

  /**
   * Where a subscriber goes on from after a gap: the newest id. Should the member's ids have
   * started over (the membership removed and made again), what this stream read is forgotten.
   */
  async resyncPoint(): Promise<number> {
    const latest = await this.latest();
    if (latest < this.fetchedTo) {
      this.fetchedTo = latest;
      this.forgetRecent();
    }
    return latest;
  }

  /** The id a subscriber sees for `seq`: `<tag>:<seq>`. */
  idOf(seq: number): string {
    return `${this.tag}:${seq}`;
  }

  /** Where a new subscriber starts, and whether it must first be told to `resync`. */
  async startingPoint(lastEventId: string | null | undefined): Promise<StartingPoint> {
    if (lastEventId === null || lastEventId === undefined) return { position: this.fetchedTo, resync: false };
    const [tag, seq] = lastEventId.split(':');
    const requested = tag === this.tag && seq !== undefined && /^\d{1,15}$/.test(seq) ? Number(seq) : undefined;
    if (requested !== undefined && requested <= this.fetchedTo) return { position: requested, resync: false };
    // Newer than this instance has read (another one delivered it first), or not an id we gave.
    const latest = await this.latest();
    this.heard(latest);
    if (requested !== undefined && requested <= latest) return { position: requested, resync: false };
    return { position: latest, resync: true };
  }

  /**
   * The events after `position`, oldest first: from memory when it holds them, else a page read
   * from the database with this member's ids in the `WHERE`. `gap` when the ones right after
   * `position` are no longer kept.
   */
  async eventsAfter(position: number): Promise<LoggedChatEvent[] | 'gap'> {
    if (position >= this.fetchedTo) return [];
    const oldest = this.recent[0];
    if (oldest && oldest.seq <= position + 1) return this.recent.filter((logged) => logged.seq > position);
    const page = await this.readPage(position);
    return page[0]?.seq === position + 1 ? page : 'gap';
  }

  /**
   * A page of the events after `position`, up to the first missing id if any (deleted past the
   * retention while later ones were kept): what comes after it is read, and found to start with a
   * gap, on the next call.
   */
  private async readPage(position: number): Promise<LoggedChatEvent[]> {
    const page = await getEventsAfter(this.deps.db, { ...this.owner, afterSeq: position, limit: PAGE_SIZE, maxBytes: PAGE_MAX_BYTES });
    const hole = page.findIndex((logged, index) => index > 0 && logged.seq !== page[index - 1]!.seq + 1);
    return hole === -1 ? page : page.slice(0, hole);
  }

  /** Wakes every subscriber waiting for events: `fetchedTo` moved. */
  wakeAll() {
    for (const subscriber of this.subscribers) subscriber.wake();
  }

  endAll(error: TRPCError) {
    for (const subscriber of [...this.subscribers]) subscriber.end(error);
  }

  private async fetch() {
    if (this.fetching || !this.initialized || this.stopped) return;
    this.fetching = true;
    try {
      while (!this.stopped && (this.probe || this.notifiedTo > this.fetchedTo)) {
        const probing = this.probe;
        this.probe = false;
        const page = await this.readPage(this.fetchedTo);
        const first = page[0];
        // The last subscriber may have left during the read: a stopped stream keeps nothing.
        if (!first || this.stopped) break;
        // Older events were deleted meanwhile: what is kept must stay without gaps.
        if (first.seq !== this.fetchedTo + 1) this.forgetRecent();
        this.remember(page);
        this.fetchedTo = page.at(-1)!.seq;
        // A notification says how far to read; a probe, which knows nothing, reads on until a page
        // comes back empty (a short page may end at a byte budget or a hole).
        if (probing) this.probe = true;
        this.wakeAll();
      }
    } catch (error) {
      this.deps.log.warn({ err: error, ...this.owner }, 'Could not read chat events; trying again shortly');
      this.probe = true;
      setTimeout(() => void this.fetch(), FETCH_RETRY_MS).unref();
    } finally {
      this.fetching = false;
    }
  }

  private remember(page: LoggedChatEvent[]) {
    const { memory } = this.deps;
    for (const logged of page) {
      this.recent.push(logged);
      this.recentBytes += logged.size;
      memory.bytes += logged.size;
    }
    // Over the instance's budget, a stream keeps nothing: its subscribers read from the database.
    while (
      this.recent.length > RECENT_MAX_EVENTS ||
      (this.recent.length > 1 && this.recentBytes > RECENT_MAX_BYTES) ||
      (this.recent.length > 0 && memory.bytes > memory.limit)
    ) {
      const dropped = this.recent.shift()!.size;
      this.recentBytes -= dropped;
      memory.bytes -= dropped;
    }
  }

  private forgetRecent() {
    this.deps.memory.bytes -= this.recentBytes;
    this.recent = [];
    this.recentBytes = 0;
  }

  /** Ends the member's streams here (FORBIDDEN) unless the membership is still active. */
  async checkMembership() {
    if (this.stopped) return;
    try {
      if ((await getEventStreamState(this.deps.db, this.owner))?.isActive) return;
    } catch {
      // The database is unreachable: this is not the moment to end streams; checked again later.
      return;
    }
    this.deps.log.info(this.owner, 'Ending the chat event streams of a deactivated membership');
    this.endAll(deactivated());
  }

  private stop() {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.membershipTimer);
    this.forgetRecent();
    this.deps.onEmpty(this);
  }
}

/** One open `chat.events` stream: a position in its member's stream, and why it must end, if it must. */
class Subscriber {
  private ended: TRPCError | undefined;
  private started = false;
  private resolveWait: (() => void) | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  private readonly unstartedTimer: NodeJS.Timeout;
  private detached = false;
  // The client left: also before tRPC started reading the stream, whose `finally` then never runs.
  private readonly onAbort = () => this.detach();

  constructor(
    private readonly stream: MemberStream,
    private readonly expiresAt: Date,
    private readonly signal: AbortSignal | undefined,
    private readonly leave: () => void,
    /** The hub's count of events handed to subscribers. */
    private readonly sentCount: SentCount,
  ) {
    stream.add(this);
    signal?.addEventListener('abort', this.onAbort, { once: true });
    // tRPC reads a subscription as soon as its procedure returns it; one it never reads (the call
    // answered 503 at its deadline meanwhile) lets go of its place here.
    this.unstartedTimer = setTimeout(() => {
      if (!this.started) this.detach();
    }, UNSTARTED_LIMIT_MS).unref();
    this.armExpiry();
  }

  async *deliver({ position, resync }: StartingPoint): AsyncGenerator<TrackedEnvelope<ChatEvent>> {
    this.started = true;
    clearTimeout(this.unstartedTimer);
    const { stream } = this;
    try {
      if (resync) yield this.sent(tracked(stream.idOf(position), RESYNC));
      while (true) {
        if (this.ended) throw this.ended;
        if (this.signal?.aborted || this.detached) return;
        const next = await stream.eventsAfter(position);
        if (next === 'gap') {
          position = await stream.resyncPoint();
          yield this.sent(tracked(stream.idOf(position), RESYNC));
          continue;
        }
        if (next.length === 0) {
          await this.waitForChange(position);
          continue;
        }
        for (const { seq, event } of next) {
          position = seq;
          if (event) yield this.sent(tracked(stream.idOf(seq), event));
        }
      }
    } catch (error) {
      throw isDatabaseUnavailable(error) ? unavailable(error) : error;
    } finally {
      this.detach();
    }
  }

  private sent<T>(envelope: T): T {
    this.sentCount.events += 1;
    return envelope;
  }

  wake() {
    const resolve = this.resolveWait;
    this.resolveWait = undefined;
    resolve?.();
  }

  /** Ends the stream with `error`, which its reader gets next; one not being read lets go at once. */
  end(error: TRPCError) {
    this.ended ??= error;
    if (this.started) this.wake();
    else this.detach();
  }

  /** Lets go of everything the subscription holds; safe to call more than once. */
  detach() {
    if (this.detached) return;
    this.detached = true;
    clearTimeout(this.expiryTimer);
    clearTimeout(this.unstartedTimer);
    this.signal?.removeEventListener('abort', this.onAbort);
    this.stream.remove(this);
    this.leave();
    this.wake();
  }

  private waitForChange(position: number): Promise<void> {
    if (this.stream.fetchedTo > position || this.ended || this.signal?.aborted || this.detached) return Promise.resolve();
    return new Promise((resolve) => {
      this.resolveWait = resolve;
    });
  }

  /** At the token's `exp`, whatever clock tolerance let it in; re-armed when `exp` is beyond a timer's reach. */
  private armExpiry() {
    const remaining = this.expiresAt.getTime() - Date.now();
    if (remaining <= 0) {
      this.end(expired());
      return;
    }
    this.expiryTimer = setTimeout(() => this.armExpiry(), Math.min(remaining, MAX_TIMER_MS)).unref();
  }
}

function expired() {
  const cause = new AccessTokenError('expired', 'Access token has expired');
  return new TRPCError({ code: 'UNAUTHORIZED', message: cause.message, cause });
}

function deactivated() {
  return new TRPCError({ code: 'FORBIDDEN', message: 'Your membership in this organization is deactivated' });
}

function restarting() {
  return new TRPCError({ code: 'SERVICE_UNAVAILABLE', message: 'This server is restarting; reconnect to continue' });
}
