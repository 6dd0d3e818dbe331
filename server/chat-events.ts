import { TRPCError, type TrackedEnvelope, tracked } from '@trpc/server';
import { sql } from 'drizzle-orm';
import {
  CHAT_EVENTS_CHANNEL,
  type ChatEvent,
  type LoggedChatEvent,
  deleteEventsRecordedBefore,
  eventStreamKey,
  getEventsAfter,
  getLatestEventSeq,
  parseEventNotification,
} from '../db/chat-events.js';
import type { SessionOwner } from '../db/chat.js';
import type { Database, DatabaseHandle, Listener } from '../db/database.js';
import { isDatabaseUnavailable } from '../db/errors.js';
import { isMembershipActive } from '../db/members.js';
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
  /** How often the streams of a member check that the membership is still active. */
  membershipCheckMs: number;
  /** How often this instance checks that its LISTEN connection still hears (default 15 s). */
  listenerHeartbeatMs?: number;
}

export const DEFAULT_EVENT_RETENTION_MS = 60 * 60_000;
export const DEFAULT_SUBSCRIPTIONS_PER_PERSON = 20;

/** Events read from the database at a time, by a stream catching up or a subscriber replaying. */
const PAGE_SIZE = 50;
/** The newest events a member's stream keeps in memory for its subscribers: at most this many, and this much text. */
const RECENT_MAX_EVENTS = 64;
const RECENT_MAX_BYTES = 512 * 1024;
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
  let listener: Listener | undefined;
  let lastHeardAt = Date.now();
  let reconnecting = false;
  let closed = false;
  const timers: NodeJS.Timeout[] = [];

  function onNotification(payload: string) {
    lastHeardAt = Date.now();
    const notification = parseEventNotification(payload);
    if (!notification) return;
    for (const stream of streams.get(notification.key) ?? []) stream.heard(notification.seq);
  }

  /** Notifications sent while not listening are lost: every stream reads what it may have missed. */
  function onListening() {
    lastHeardAt = Date.now();
    for (const list of streams.values()) for (const stream of list) stream.catchUp();
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
      const leave = perPerson.enter(`${owner.organizationId}\u0000${owner.userId}`);
      if (!leave) {
        throw new TRPCError({
          code: 'TOO_MANY_REQUESTS',
          message: `You have ${options.subscriptionsPerPerson} event streams open; close one first`,
        });
      }
      const stream = streamFor(owner);
      const subscriber = new Subscriber(stream, expiresAt, signal, leave);
      try {
        await stream.ready;
        const start = await stream.startingPoint(lastEventId);
        return subscriber.deliver(start);
      } catch (error) {
        subscriber.detach();
        throw isDatabaseUnavailable(error) ? unavailable(error) : error;
      }
    },

    /** Streams (members with subscribers here) and subscriptions open now. */
    stats() {
      let members = 0;
      let subscriptions = 0;
      for (const list of streams.values()) {
        for (const stream of list) {
          members += 1;
          subscriptions += stream.size;
        }
      }
      return { members, subscriptions };
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

interface StreamDeps {
  db: Database;
  log: Logger;
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

  constructor(
    readonly owner: SessionOwner,
    private readonly deps: StreamDeps,
  ) {
    // Read after the stream is registered: an event committed later is notified to it.
    this.ready = getLatestEventSeq(deps.db, owner).then(
      (latest) => {
        this.fetchedTo = latest ?? 0;
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
    return (await getLatestEventSeq(this.deps.db, this.owner)) ?? 0;
  }

  /** Where a new subscriber starts, and whether it must first be told to `resync`. */
  async startingPoint(lastEventId: string | null | undefined): Promise<StartingPoint> {
    if (lastEventId === null || lastEventId === undefined) return { position: this.fetchedTo, resync: false };
    const requested = /^\d{1,15}$/.test(lastEventId) ? Number(lastEventId) : undefined;
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
    const page = await getEventsAfter(this.deps.db, { ...this.owner, afterSeq: position, limit: PAGE_SIZE });
    return page[0]?.seq === position + 1 ? page : 'gap';
  }

  /** Resolves at the next change of `fetchedTo`. */
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
        this.probe = false;
        const page = await getEventsAfter(this.deps.db, { ...this.owner, afterSeq: this.fetchedTo, limit: PAGE_SIZE });
        const first = page[0];
        if (!first) break;
        // Older events were deleted meanwhile: what is kept must stay without gaps.
        if (first.seq !== this.fetchedTo + 1) this.recent = [];
        this.remember(page);
        this.fetchedTo = page.at(-1)!.seq;
        if (page.length === PAGE_SIZE) this.probe = true;
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
    this.recent.push(...page);
    this.recentBytes = this.recent.reduce((total, logged) => total + logged.size, 0);
    while (this.recent.length > RECENT_MAX_EVENTS || (this.recent.length > 1 && this.recentBytes > RECENT_MAX_BYTES)) {
      this.recentBytes -= this.recent.shift()!.size;
    }
  }

  private async checkMembership() {
    try {
      if (await isMembershipActive(this.deps.db, this.owner)) return;
    } catch {
      // The database is unreachable: this is not the moment to end streams; checked again later.
      return;
    }
    this.deps.log.info(this.owner, 'Ending the chat event streams of a deactivated membership');
    this.endAll(new TRPCError({ code: 'FORBIDDEN', message: 'Your membership in this organization is deactivated' }));
  }

  private stop() {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.membershipTimer);
    this.deps.onEmpty(this);
  }
}

/** One open `chat.events` stream: a position in its member's stream, and why it must end, if it must. */
class Subscriber {
  private ended: TRPCError | undefined;
  private resolveWait: (() => void) | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  private detached = false;
  private readonly onAbort = () => this.wake();

  constructor(
    private readonly stream: MemberStream,
    private readonly expiresAt: Date,
    private readonly signal: AbortSignal | undefined,
    private readonly leave: () => void,
  ) {
    stream.add(this);
    this.armExpiry();
    // A stream the client left before it was read from still lets go of its place.
    signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  async *deliver({ position, resync }: StartingPoint): AsyncGenerator<TrackedEnvelope<ChatEvent>> {
    try {
      if (resync) yield tracked(String(position), RESYNC);
      while (true) {
        if (this.signal?.aborted) return;
        if (this.ended) throw this.ended;
        const next = await this.stream.eventsAfter(position);
        if (next === 'gap') {
          position = Math.max(position, await this.stream.latest());
          yield tracked(String(position), RESYNC);
          continue;
        }
        if (next.length === 0) {
          await this.waitForChange(position);
          continue;
        }
        for (const { seq, event } of next) {
          position = seq;
          if (event) yield tracked(String(seq), event);
        }
      }
    } catch (error) {
      throw isDatabaseUnavailable(error) ? unavailable(error) : error;
    } finally {
      this.detach();
    }
  }

  wake() {
    const resolve = this.resolveWait;
    this.resolveWait = undefined;
    resolve?.();
  }

  end(error: TRPCError) {
    this.ended ??= error;
    this.wake();
  }

  /** Lets go of everything the subscription holds; safe to call more than once. */
  detach() {
    if (this.detached) return;
    this.detached = true;
    clearTimeout(this.expiryTimer);
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

function restarting() {
  return new TRPCError({ code: 'SERVICE_UNAVAILABLE', message: 'This server is restarting; reconnect to continue' });
}
