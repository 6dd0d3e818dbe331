import { createHash } from 'node:crypto';
import { and, asc, eq, gt, lt, sql } from 'drizzle-orm';
import { z } from 'zod';
import type { Message, Session, SessionOwner } from './chat.js';
import type { Database } from './database.js';
import { membershipActiveSql } from './members.js';
import { type ChatEventData, type StoredMessage, type StoredSession, chatEvents, chatMessages, organizationMembers } from './schema.js';

/**
 * The one channel every instance LISTENs on: a notification names a member's stream and its newest
 * id, or memberships that changed (see `Notification`).
 */
export const CHAT_EVENTS_CHANNEL = 'chat_events';

/** What `chat.events` delivers. */
export type ChatEvent =
  | { type: 'session.created'; session: Session }
  | { type: 'session.updated'; session: Session }
  | { type: 'session.deleted'; sessionId: string }
  | { type: 'message.created'; message: Message }
  /** More text of a reply (`status: 'streaming'`): append it. */
  | { type: 'reply.delta'; messageId: string; sessionId: string; text: string }
  /** The reply as stored in the end: `status` is `complete`, or `stopped` by the person. */
  | { type: 'reply.completed'; message: Message }
  /** The reply failed; `message` holds the text received before. */
  | { type: 'reply.failed'; message: Message; reason: ReplyFailure }
  /** The events after the subscriber's `lastEventId` are no longer kept: load the state again. */
  | { type: 'resync' };

/**
 * Why a reply failed: the provider refused or broke off (`provider_error`), sent no text for
 * `LLM_TIMEOUT_MS` (`timeout`), or the instance writing it stopped (`interrupted`).
 */
export type ReplyFailure = 'provider_error' | 'timeout' | 'interrupted';

/** An event as the writing transaction records it. */
export type NewChatEvent =
  | { type: 'session.created' | 'session.updated'; session: Session }
  | { type: 'session.deleted'; sessionId: string }
  /** A reply still streaming is stored as it is now; any other message is read when delivered. */
  | { type: 'message.created'; message: Message }
  | { type: 'reply.delta'; messageId: string; sessionId: string; text: string }
  | { type: 'reply.completed'; message: Message }
  | { type: 'reply.failed'; message: Message; reason: ReplyFailure };

/** An event read back: `event` is null for a message deleted since (its session's deletion follows). */
export interface LoggedChatEvent {
  seq: number;
  event: ChatEvent | null;
  /** Roughly the memory the event takes (its text), for bounding what is held. */
  size: number;
}

/**
 * The key of a member's stream in notifications: a digest, so that a payload stays short whatever
 * the ids, and names no one. Two members sharing a key would only make an instance read both
 * streams: what a subscriber receives comes from a query on its own ids.
 */
export function eventStreamKey({ userId, organizationId }: SessionOwner): string {
  return createHash('sha256').update(userId).update('\u0000').update(organizationId).digest('base64url').slice(0, 22);
}

/** Whose memberships changed: one person's in one organization, or all of a person's, or all of an organization's. */
export interface MembershipChange {
  userId?: string | undefined;
  organizationId?: string | undefined;
}

/** Whether `change` concerns the membership of `userId` in `organizationId` (an id it leaves out matches any). */
export function changeConcerns(change: MembershipChange, { userId, organizationId }: SessionOwner): boolean {
  return (change.userId ?? userId) === userId && (change.organizationId ?? organizationId) === organizationId;
}

/** What a notification on the channel says; `undefined` for anything else (heartbeats). */
export type Notification =
  /** `<stream key> <newest seq>`: the member's events up to `seq` are committed. */
  | { kind: 'events'; key: string; seq: number }
  /** `members <json>`: these memberships changed (Frontegg's webhooks); forget what is remembered of them. */
  | { kind: 'members'; change: MembershipChange };

const membershipChange = z.strictObject({ userId: z.string().optional(), organizationId: z.string().optional() });

export function parseNotification(payload: string): Notification | undefined {
  const events = /^([\w-]{22}) (\d{1,15})$/.exec(payload);
  if (events) return { kind: 'events', key: events[1]!, seq: Number(events[2]) };
  if (!payload.startsWith('members ')) return undefined;
  try {
    const change = membershipChange.safeParse(JSON.parse(payload.slice('members '.length)));
    return change.success ? { kind: 'members', change: change.data } : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Tells every instance, this one included, that these memberships changed: PostgreSQL sends it when
 * the transaction `tx` commits, and drops it if it rolls back. The ids fit a notification's 8,000
 * bytes (identifiers are at most 256 characters).
 */
export async function notifyMembershipChanged(tx: Database, change: MembershipChange): Promise<void> {
  const payload = `members ${JSON.stringify({ userId: change.userId, organizationId: change.organizationId })}`;
  await tx.execute(sql`select pg_notify(${CHAT_EVENTS_CHANNEL}, ${payload})`);
}

export interface EventLog {
  /**
   * Records the events, in this order, in the transaction that made the changes, and notifies
   * every instance when (and only if) it commits.
   */
  record(events: NewChatEvent[]): Promise<void>;
}

/**
 * Locks the member's row for the rest of the transaction and returns what records its events;
 * `undefined` when there is no such membership. Every transaction that changes an owner's chats
 * starts here, before it locks any session: the same order everywhere, so two of them never
 * deadlock, and one member's events are numbered in the order they commit.
 */
export async function openEventLog(tx: Database, owner: SessionOwner): Promise<EventLog | undefined> {
  const [member] = await tx
    .select({ lastEventSeq: organizationMembers.lastEventSeq })
    .from(organizationMembers)
    .where(memberIs(owner))
    .for('no key update');
  if (!member) return undefined;
  let last = member.lastEventSeq;
  return {
    async record(events) {
      if (events.length === 0) return;
      const rows = events.map((event, index) => ({ seq: last + index + 1, ...storedEvent(event) }));
      last += events.length;
      // One statement: the events, the member's newest id, and the notification, which
      // PostgreSQL sends when the transaction commits and drops when it rolls back.
      const inserted = tx.$with('inserted').as(
        tx
          .insert(chatEvents)
          // The time of the insert, not of the transaction's start (`now()`): taken under the
          // member's lock, it grows with `seq`, so deleting by age never leaves a hole mid-stream.
          .values(rows.map((row) => ({ ...owner, ...row, createdAt: sql`clock_timestamp()` })))
          .returning({ seq: chatEvents.seq }),
      );
      const raised = tx.$with('raised').as(
        tx
          .update(organizationMembers)
          .set({ lastEventSeq: last })
          .where(memberIs(owner))
          .returning({ lastEventSeq: organizationMembers.lastEventSeq }),
      );
      await tx
        .with(inserted, raised)
        .select({ notified: sql`pg_notify(${CHAT_EVENTS_CHANNEL}, ${`${eventStreamKey(owner)} ${last}`})` })
        .from(raised);
    },
  };
}

/** The columns of an event's row besides its owner and `seq`. */
function storedEvent(event: NewChatEvent) {
  const row = { type: event.type, messageId: null as string | null, session: null as StoredSession | null, data: null as ChatEventData | null };
  switch (event.type) {
    case 'session.created':
    case 'session.updated':
      return { ...row, sessionId: event.session.id, session: storedSession(event.session) };
    case 'session.deleted':
      return { ...row, sessionId: event.sessionId };
    case 'message.created': {
      const { message } = event;
      // A reply's text grows after this event: replayed, it must show the reply as it began.
      const data = message.status === 'streaming' ? { message: storedMessage(message) } : null;
      return { ...row, sessionId: message.sessionId, messageId: message.id, data };
    }
    case 'reply.delta':
      return { ...row, sessionId: event.sessionId, messageId: event.messageId, data: { text: event.text } };
    case 'reply.completed':
      return { ...row, sessionId: event.message.sessionId, messageId: event.message.id };
    case 'reply.failed':
      return { ...row, sessionId: event.message.sessionId, messageId: event.message.id, data: { reason: event.reason } };
  }
}

const storedMessage = (message: Message): StoredMessage => ({
  id: message.id,
  sessionId: message.sessionId,
  role: message.role,
  content: message.content,
  status: message.status,
  createdAt: message.createdAt.toISOString(),
});

const memberIs = (owner: SessionOwner) =>
  and(eq(organizationMembers.userId, owner.userId), eq(organizationMembers.organizationId, owner.organizationId));

const storedSession = (session: Session): StoredSession => ({
  ...session,
  createdAt: session.createdAt.toISOString(),
  updatedAt: session.updatedAt.toISOString(),
});

const messageFromStored = (message: StoredMessage): Message => ({ ...message, createdAt: new Date(message.createdAt) });

const sessionFromStored = (session: StoredSession): Session => ({
  ...session,
  createdAt: new Date(session.createdAt),
  updatedAt: new Date(session.updatedAt),
});

/**
 * The id of the member's newest event, and whether the membership is active; `undefined` when
 * there is no such membership.
 */
export async function getEventStreamState(
  db: Database,
  owner: SessionOwner,
): Promise<{ lastEventSeq: number; isActive: boolean } | undefined> {
  const [member] = await db
    .select({ lastEventSeq: organizationMembers.lastEventSeq, isActive: membershipActiveSql })
    .from(organizationMembers)
    .where(memberIs(owner));
  return member;
}

/**
 * The member's events after `afterSeq`, oldest first: at most `limit`, and stopping before the
 * message text would pass `maxBytes` (at least one event), so that text beyond it never leaves the
 * database. Each message event comes with its message's current row. Only the owner's own rows
 * can match: both ids are in the `WHERE`.
 */
export async function getEventsAfter(
  db: Database,
  { afterSeq, limit, maxBytes, ...owner }: SessionOwner & { afterSeq: number; limit: number; maxBytes: number },
): Promise<LoggedChatEvent[]> {
  // The text an event delivers: what it holds itself, plus its message's when it shows the current row.
  const showsCurrentMessage = sql`${chatEvents.type} in ('message.created', 'reply.completed', 'reply.failed') and ${chatEvents.data} -> 'message' is null`;
  const bytes = sql`coalesce(octet_length(${chatEvents.data}::text), 0)
    + case when ${showsCurrentMessage} then coalesce(octet_length(${chatMessages.content}), 0) else 0 end`;
  const page = db.$with('page').as(
    db
      .select({
        seq: chatEvents.seq,
        type: chatEvents.type,
        sessionId: chatEvents.sessionId,
        session: chatEvents.session,
        data: chatEvents.data,
        messageId: chatEvents.messageId,
        place: sql<number>`row_number() over (order by ${chatEvents.seq})`.as('place'),
        // The text up to and including each event, in order.
        bytesSoFar: sql<number>`sum(${bytes}) over (order by ${chatEvents.seq})`.as('bytes_so_far'),
      })
      .from(chatEvents)
      .leftJoin(chatMessages, eq(chatMessages.id, chatEvents.messageId))
      .where(
        and(
          eq(chatEvents.userId, owner.userId),
          eq(chatEvents.organizationId, owner.organizationId),
          gt(chatEvents.seq, afterSeq),
        ),
      )
      .orderBy(asc(chatEvents.seq))
      .limit(limit),
  );
  const rows = await db
    .with(page)
    .select({
      seq: page.seq,
      type: page.type,
      sessionId: page.sessionId,
      session: page.session,
      data: page.data,
      messageId: chatMessages.id,
      role: chatMessages.role,
      content: chatMessages.content,
      status: chatMessages.status,
      messageCreatedAt: chatMessages.createdAt,
    })
    .from(page)
    .leftJoin(chatMessages, eq(chatMessages.id, page.messageId))
    .where(sql`${page.place} = 1 or ${page.bytesSoFar} <= ${maxBytes}`)
    .orderBy(asc(page.seq));
  return rows.map((row): LoggedChatEvent => {
    const logged = (event: ChatEvent | null, text = '') => ({ seq: row.seq, event, size: 256 + 2 * text.length });
    switch (row.type) {
      case 'session.created':
      case 'session.updated':
        return logged(row.session && { type: row.type, session: sessionFromStored(row.session) });
      case 'session.deleted':
        return logged({ type: row.type, sessionId: row.sessionId });
    }
    // A message deleted since (with its session, whose deletion follows) is not replayed.
    if (row.messageId === null || row.role === null || row.content === null || row.status === null || row.messageCreatedAt === null) {
      return logged(null);
    }
    const current: Message = {
      id: row.messageId,
      sessionId: row.sessionId,
      role: row.role,
      content: row.content,
      status: row.status,
      createdAt: row.messageCreatedAt,
    };
    const data = row.data ?? {};
    switch (row.type) {
      case 'message.created': {
        const message = data.message ? messageFromStored(data.message) : current;
        return logged({ type: row.type, message }, message.content);
      }
      case 'reply.delta': {
        const text = data.text ?? '';
        return logged({ type: row.type, messageId: row.messageId, sessionId: row.sessionId, text }, text);
      }
      case 'reply.completed':
        return logged({ type: row.type, message: current }, current.content);
      case 'reply.failed':
        return logged({ type: row.type, message: current, reason: (data.reason ?? 'provider_error') as ReplyFailure }, current.content);
    }
  });
}

/**
 * Deletes events recorded before `cutoff`, in batches; returns how many. Rows another instance is
 * deleting at the same moment are skipped rather than waited for.
 */
export async function deleteEventsRecordedBefore(db: Database, cutoff: Date, batchSize = 5_000): Promise<number> {
  let total = 0;
  for (;;) {
    const batch = db
      .select({ userId: chatEvents.userId, organizationId: chatEvents.organizationId, seq: chatEvents.seq })
      .from(chatEvents)
      .where(lt(chatEvents.createdAt, cutoff))
      .limit(batchSize)
      .for('update', { skipLocked: true });
    const deleted = await db
      .delete(chatEvents)
      .where(sql`(${chatEvents.userId}, ${chatEvents.organizationId}, ${chatEvents.seq}) in (${batch})`)
      .returning({ seq: chatEvents.seq });
    total += deleted.length;
    if (deleted.length < batchSize) return total;
  }
}
