import { type SQL, and, desc, eq, lt, sql } from 'drizzle-orm';
import { type EventLog, type ReplyFailure, openEventLog } from './chat-events.js';
import type { Database } from './database.js';
import { isUniqueViolation } from './errors.js';
import {
  type ChatMessage,
  type ChatSession,
  DEFAULT_SESSION_TITLE,
  type MessageRole,
  chatEvents,
  chatMessages,
  chatSessions,
  replyUsage,
} from './schema.js';

/**
 * Whose sessions a query may touch: every function here puts both ids in its `WHERE`, so a
 * session of another user or tenant is never read or written, and looks like one that does not exist.
 */
export interface SessionOwner {
  userId: string;
  organizationId: string;
}

/** The columns callers see, by name: `Session` in the API, and the one list of its fields. */
export const sessionColumns = {
  id: chatSessions.id,
  title: chatSessions.title,
  isActive: chatSessions.isActive,
  createdAt: chatSessions.createdAt,
  updatedAt: chatSessions.updatedAt,
};

/** `Message` in the API, plus `seq`, the conversation order that message cursors hold. */
export const messageColumns = {
  id: chatMessages.id,
  sessionId: chatMessages.sessionId,
  role: chatMessages.role,
  content: chatMessages.content,
  status: chatMessages.status,
  createdAt: chatMessages.createdAt,
  seq: chatMessages.seq,
};

export type Session = Pick<ChatSession, keyof typeof sessionColumns>;
export type Message = Omit<StoredMessageRow, 'seq'>;
/** A message as read with `messageColumns`. */
export type StoredMessageRow = Pick<ChatMessage, keyof typeof messageColumns>;

export interface SessionPosition {
  updatedAt: Date;
  id: string;
}

const ownedBy = (owner: SessionOwner) =>
  and(eq(chatSessions.userId, owner.userId), eq(chatSessions.organizationId, owner.organizationId));

export const ownedSession = (owner: SessionOwner, id: string) => and(eq(chatSessions.id, id), ownedBy(owner));

/**
 * The owner's active session, created when there is none: a plain read, which finds it on all
 * but the first call (every signed-in page load asks, so that is one statement, prepared once
 * per database handle), then an insert when it found none. Concurrent first calls queue on the
 * membership row (`openEventLog`); the first inserts, the others insert nothing and read its row.
 */
export async function getOrCreateActiveSession(
  db: Database,
  owner: SessionOwner,
): Promise<{ session: Session; created: boolean }> {
  const placeholders = { userId: owner.userId, organizationId: owner.organizationId };
  for (let attempt = 1; ; attempt++) {
    const [found] = await preparedFor(db, readActiveSession).execute(placeholders);
    if (found) return { session: found, created: false };
    const inserted = await writeChats(db, owner, async (tx, events) => {
      const [session] = await tx
        .insert(chatSessions)
        .values({ userId: owner.userId, organizationId: owner.organizationId, isActive: true })
        .onConflictDoNothing({ target: [chatSessions.userId, chatSessions.organizationId], where: sql`${chatSessions.isActive}` })
        .returning(sessionColumns);
      if (session) await events.record([{ type: 'session.created', session }]);
      return session;
    });
    if (inserted) return { session: inserted, created: true };
    // Lost the race to a concurrent insert; read again, unless that session keeps vanishing.
    if (attempt === 3) throw new Error('the active session was created and removed three times while reading it');
  }
}

const readActiveSession = (db: Database) =>
  db
    .select(sessionColumns)
    .from(chatSessions)
    .where(
      and(
        eq(chatSessions.userId, sql.placeholder('userId')),
        eq(chatSessions.organizationId, sql.placeholder('organizationId')),
        eq(chatSessions.isActive, true),
      ),
    )
    .prepare('read_active_session');

/**
 * Runs `change` in a transaction that first locks the owner's membership row (`openEventLog`),
 * and records the events it returns there. Every change to an owner's chats goes through here.
 */
export async function writeChats<T>(
  db: Database,
  owner: SessionOwner,
  change: (tx: Database, events: EventLog) => Promise<T>,
): Promise<T> {
  return db.transaction(async (tx) => {
    const events = await openEventLog(tx, owner);
    // The caller was provisioned moments ago; only a concurrent removal of the membership gets here.
    if (!events) throw new Error('the membership was removed during the request');
    return change(tx, events);
  });
}

const prepared = new WeakMap<Database, Map<unknown, unknown>>();

/** `prepare(db)`, once per database handle. */
function preparedFor<Query>(db: Database, prepare: (db: Database) => Query): Query {
  let queries = prepared.get(db);
  if (!queries) prepared.set(db, (queries = new Map()));
  let query = queries.get(prepare) as Query | undefined;
  if (!query) queries.set(prepare, (query = prepare(db)));
  return query;
}

/** A new session, made the owner's only active one in the same transaction. */
export function createActiveSession(db: Database, owner: SessionOwner & { title?: string | undefined }) {
  return changeActiveSession(db, owner, async (tx, events) => {
    const deactivated = await deactivateSessions(tx, owner);
    const [session] = await tx
      .insert(chatSessions)
      .values({
        userId: owner.userId,
        organizationId: owner.organizationId,
        title: owner.title ?? DEFAULT_SESSION_TITLE,
        isActive: true,
      })
      .returning(sessionColumns);
    if (!session) throw new Error('insert with RETURNING returned no row');
    await events.record([...updated(deactivated), { type: 'session.created', session }]);
    return session;
  });
}

/** Makes the session the owner's only active one; `undefined` when the owner has no such session. */
export function activateSessionById(db: Database, { id, ...owner }: SessionOwner & { id: string }) {
  return changeActiveSession(db, owner, async (tx, events) => {
    const [target] = await tx.select(sessionColumns).from(chatSessions).where(ownedSession(owner, id));
    if (!target || target.isActive) return target;
    const deactivated = await deactivateSessions(tx, owner);
    const [session] = await tx
      .update(chatSessions)
      .set({ isActive: true })
      .where(ownedSession(owner, id))
      .returning(sessionColumns);
    if (session) await events.record(updated([...deactivated, session]));
    return session;
  });
}

const updated = (sessions: Session[]) => sessions.map((session) => ({ type: 'session.updated' as const, session }));

const oneActiveIndex = ['chat_sessions_one_active_idx'];

/**
 * Runs a change of the owner's active session in `writeChats`, whose lock on their membership
 * row makes such changes for one owner run one at a time. `getOrCreateActiveSession` inserts
 * under the same lock, but a session made active by an older instance of this service, or by
 * hand, could still race us: the unique index then refuses our insert and the change runs again.
 */
async function changeActiveSession<T>(
  db: Database,
  owner: SessionOwner,
  change: (tx: Database, events: EventLog) => Promise<T>,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await writeChats(db, owner, change);
    } catch (error) {
      if (attempt < 3 && isUniqueViolation(error, oneActiveIndex)) continue;
      throw error;
    }
  }
}

function deactivateSessions(tx: Database, owner: SessionOwner): Promise<Session[]> {
  return tx
    .update(chatSessions)
    .set({ isActive: false })
    .where(and(ownedBy(owner), eq(chatSessions.isActive, true)))
    .returning(sessionColumns);
}

/**
 * The owner's sessions by most recent activity (`updated_at`, ties broken by id), `limit` at a
 * time, starting after `before`. `hasMore` comes from fetching one row beyond the page.
 */
export async function getSessionsByOwner(
  db: Database,
  { limit, before, ...owner }: SessionOwner & { limit: number; before?: SessionPosition | undefined },
) {
  const rows = await db
    .select(sessionColumns)
    .from(chatSessions)
    .where(
      and(
        ownedBy(owner),
        // A row comparison is one range of the (user, org, updated_at, id) index.
        before &&
          sql`(${chatSessions.updatedAt}, ${chatSessions.id}) < (${before.updatedAt.toISOString()}::timestamptz, ${before.id}::uuid)`,
      ),
    )
    .orderBy(desc(chatSessions.updatedAt), desc(chatSessions.id))
    .limit(limit + 1);
  return { sessions: rows.slice(0, limit), hasMore: rows.length > limit };
}

export async function getSessionById(db: Database, { id, ...owner }: SessionOwner & { id: string }) {
  const [session] = await db.select(sessionColumns).from(chatSessions).where(ownedSession(owner, id));
  return session;
}

export function renameSessionById(db: Database, { id, title, ...owner }: SessionOwner & { id: string; title: string }) {
  return writeChats(db, owner, async (tx, events) => {
    const [session] = await tx
      .update(chatSessions)
      .set({ title, updatedAt: sql`now()` })
      .where(ownedSession(owner, id))
      .returning(sessionColumns);
    if (session) await events.record([{ type: 'session.updated', session }]);
    return session;
  });
}

/**
 * Deletes the session; its messages go with it in the same statement (ON DELETE CASCADE). A reply
 * still streaming is stopped first, so that it is metered, and the text its `reply.delta` events
 * hold is cleared: nothing of the conversation outlives it.
 */
export function deleteSessionById(db: Database, { id, ...owner }: SessionOwner & { id: string }) {
  return writeChats(db, owner, async (tx, events) => {
    await endReplies(tx, events, owner, streamingReply(owner, { sessionId: id }), { status: 'stopped' });
    const [deleted] = await tx.delete(chatSessions).where(ownedSession(owner, id)).returning({ id: chatSessions.id });
    if (!deleted) return false;
    await events.record([{ type: 'session.deleted', sessionId: deleted.id }]);
    await tx
      .update(chatEvents)
      .set({ data: null })
      .where(
        and(
          eq(chatEvents.userId, owner.userId),
          eq(chatEvents.organizationId, owner.organizationId),
          eq(chatEvents.sessionId, deleted.id),
          eq(chatEvents.type, 'reply.delta'),
        ),
      );
    return true;
  });
}

/** The reply streaming in the owner's session (that reply only, when `messageId` is given). */
export const streamingReply = (owner: SessionOwner, { messageId, sessionId }: { messageId?: string; sessionId: string }) =>
  and(
    messageId === undefined ? undefined : eq(chatMessages.id, messageId),
    eq(chatMessages.status, 'streaming'),
    eq(chatMessages.sessionId, sessionId),
    sql`exists (select from ${chatSessions} where ${ownedSession(owner, sessionId)})`,
  );

/** A streaming reply whose lease has passed: the instance writing it stopped renewing it, so it is gone. */
export const leasePassed = lt(chatMessages.leaseExpiresAt, sql`now()`);

/**
 * Ends as failed (`interrupted`) the owner's replies in the session (that one only, when
 * `messageId` is given) whose writer is gone.
 */
export function endAbandonedReplies(tx: Database, events: EventLog, owner: SessionOwner, which: { sessionId: string; messageId?: string }) {
  return endReplies(tx, events, owner, and(streamingReply(owner, which), leasePassed), { status: 'failed', failure: 'interrupted' });
}

/** Tokens as the provider reported them; `undefined` where it reported none. */
export interface TokenUsage {
  inputTokens: number | undefined;
  outputTokens: number | undefined;
}

/**
 * Ends the owner's replies matching `where` (all still streaming) with `status`, appending `text`,
 * stores what each used, and records how each ended (the rest of its text as a last
 * `reply.delta`, so that the deltas add up to the stored text). Returns the replies so ended.
 * The one way a reply ends.
 */
export async function endReplies(
  tx: Database,
  events: EventLog,
  owner: SessionOwner,
  where: SQL | undefined,
  {
    status,
    text = '',
    usage,
    failure,
  }: { status: 'complete' | 'failed' | 'stopped'; text?: string; usage?: TokenUsage | undefined; failure?: ReplyFailure | undefined },
): Promise<StoredMessageRow[]> {
  const ended = await tx
    .update(chatMessages)
    .set({
      status,
      content: sql`${chatMessages.content} || ${text}`,
      leaseExpiresAt: null,
      inputTokens: usage?.inputTokens ?? null,
      outputTokens: usage?.outputTokens ?? null,
    })
    .where(where)
    .returning({ ...messageColumns, model: chatMessages.model });
  if (ended.length === 0) return [];
  await tx
    .insert(replyUsage)
    .values(
      ended.map((reply) => ({
        messageId: reply.id,
        organizationId: owner.organizationId,
        userId: owner.userId,
        model: reply.model ?? 'unknown',
        inputTokens: usage?.inputTokens ?? null,
        outputTokens: usage?.outputTokens ?? null,
      })),
    )
    .onConflictDoNothing();
  const messages = ended.map(({ model: _model, ...message }) => message);
  await events.record(
    messages.flatMap((message) => [
      ...(text ? [{ type: 'reply.delta' as const, messageId: message.id, sessionId: message.sessionId, text }] : []),
      failure ? { type: 'reply.failed' as const, message, reason: failure } : { type: 'reply.completed' as const, message },
    ]),
  );
  return messages;
}

/** What the reply to a message needs when it is stored (`ReplyRunner.toStore`). */
export interface ReplyToStore {
  model: string;
  /** How long the reply is taken for alive before the instance writing it must renew it. */
  leaseMs: number;
  /** Replies streaming at once in the organization, across instances; one more is refused. */
  maxPerOrganization: number;
  /** Replies one person streams at once in the organization, across instances. */
  maxPerPerson: number;
}

export type AddMessageResult =
  | { status: 'stored'; message: StoredMessageRow; reply: StoredMessageRow | null }
  | { status: 'no_session' }
  /** A reply in this session is still streaming. */
  | { status: 'reply_streaming' }
  /** The organization has `maxPerOrganization` replies streaming. */
  | { status: 'organization_busy' }
  /** The person has `maxPerPerson` replies streaming in the organization. */
  | { status: 'person_busy' };

/**
 * Stores a message and bumps the session's `updated_at` in one transaction, with the assistant's
 * reply when `reply` is given: empty, `streaming`, right after the message. A session still
 * titled `New Chat` with no messages yet takes `titleIfFirst`. The owner's membership row is
 * locked first (`writeChats`), so one session's messages are numbered in commit order and a reader
 * paging by `seq` never finds an older message appearing behind it. Nothing is stored when the
 * session already has a reply streaming, or the person or the organization as many as they may.
 */
export async function addMessageToSession(
  db: Database,
  {
    sessionId,
    role,
    content,
    titleIfFirst,
    reply,
    ...owner
  }: SessionOwner & { sessionId: string; role: MessageRole; content: string; titleIfFirst: string; reply?: ReplyToStore | undefined },
): Promise<AddMessageResult> {
  try {
    return await writeChats(db, owner, async (tx, events): Promise<AddMessageResult> => {
      // First, so that a refused message changes nothing, not even the session's activity.
      if (reply) {
        // A reply of this session whose writer is gone ends now, not at the next sweep.
        await endAbandonedReplies(tx, events, owner, { sessionId });
        const streaming = await countStreamingReplies(tx, { ...owner, sessionId });
        if (streaming.inSession > 0) return { status: 'reply_streaming' };
        if (streaming.ofPerson >= reply.maxPerPerson) return { status: 'person_busy' };
        if (streaming.inOrganization >= reply.maxPerOrganization) return { status: 'organization_busy' };
      }
      const [session] = await tx
        .update(chatSessions)
        .set({
          updatedAt: sql`now()`,
          title: sql`case when ${chatSessions.title} = ${DEFAULT_SESSION_TITLE}
            and not exists (select from ${chatMessages} where ${chatMessages.sessionId} = ${chatSessions.id})
            then ${titleIfFirst} else ${chatSessions.title} end`,
        })
        .where(ownedSession(owner, sessionId))
        .returning(sessionColumns);
      if (!session) return { status: 'no_session' };
      const [message] = await tx
        .insert(chatMessages)
        .values({ sessionId, role, content, createdAt: sql`now()` })
        .returning(messageColumns);
      if (!message) throw new Error('insert with RETURNING returned no row');
      const [placeholder] = reply
        ? await tx
            .insert(chatMessages)
            .values({
              sessionId,
              role: 'assistant',
              content: '',
              status: 'streaming',
              model: reply.model,
              leaseExpiresAt: sql`now() + ${reply.leaseMs} * interval '1 millisecond'`,
              createdAt: sql`now()`,
            })
            .returning(messageColumns)
        : [];
      await events.record([
        { type: 'message.created', message },
        ...(placeholder ? [{ type: 'message.created' as const, message: placeholder }] : []),
        { type: 'session.updated', session },
      ]);
      return { status: 'stored', message, reply: placeholder ?? null };
    });
  } catch (error) {
    // The check above runs under the owner's lock; a reply made streaming some other way (by
    // hand, or an older instance) still meets the index.
    if (isUniqueViolation(error, ['chat_messages_one_streaming_idx'])) return { status: 'reply_streaming' };
    throw error;
  }
}

/**
 * The replies streaming in the owner's organization, the owner's among them, and in the owner's session (a
 * colleague's session counts as none: whether it streams is not the caller's to learn). Counted
 * under a lock on the organization's replies, held to the end of the transaction, so that two
 * instances storing replies at once cannot both pass the cap; only transactions storing a reply take it.
 */
async function countStreamingReplies(tx: Database, { sessionId, ...owner }: SessionOwner & { sessionId: string }) {
  await tx.execute(sql`select pg_advisory_xact_lock(hashtextextended(${`replies:${owner.organizationId}`}, 0))`);
  // A separate statement: in READ COMMITTED it sees what the previous holder of the lock committed.
  const [counts] = await tx
    .select({
      inOrganization: sql<number>`count(*)`.mapWith(Number),
      inSession: sql<number>`count(*) filter (where ${ownedSession(owner, sessionId)})`.mapWith(Number),
      ofPerson: sql<number>`count(*) filter (where ${chatSessions.userId} = ${owner.userId})`.mapWith(Number),
    })
    .from(chatMessages)
    .innerJoin(chatSessions, eq(chatSessions.id, chatMessages.sessionId))
    .where(and(eq(chatSessions.organizationId, owner.organizationId), eq(chatMessages.status, 'streaming')));
  return counts ?? { inOrganization: 0, inSession: 0, ofPerson: 0 };
}

/** At most this much message text (UTF-8 bytes) in one page, whatever `limit` allows. */
export const MESSAGE_PAGE_MAX_BYTES = 1024 * 1024;

/**
 * The newest `limit` messages of an owner's session older than `beforeSeq` (of those matching
 * `only`, when given), oldest first, stopping early where their text would pass `maxBytes`, or
 * `maxCharacters` when given (a page has at least one message). `hasMore` tells whether older
 * messages remain. The budget is applied in the SQL, so text beyond it never leaves the database.
 * An empty page does not tell whether the session exists: ask `getSessionById`.
 */
export async function getMessagesBySessionId(
  db: Database,
  {
    sessionId,
    limit,
    beforeSeq,
    maxBytes = MESSAGE_PAGE_MAX_BYTES,
    maxCharacters,
    only,
    ...owner
  }: SessionOwner & {
    sessionId: string;
    limit: number;
    beforeSeq?: number | undefined;
    maxBytes?: number;
    maxCharacters?: number;
    only?: SQL | undefined;
  },
) {
  const size = maxCharacters === undefined ? sql`octet_length(${chatMessages.content})` : sql`char_length(${chatMessages.content})`;
  const maxSize = maxCharacters ?? maxBytes;
  const newest = db.$with('newest').as(
    db
      .select({
        id: chatMessages.id,
        seq: chatMessages.seq,
        size: sql<number>`${size}`.as('size'),
      })
      .from(chatMessages)
      .innerJoin(chatSessions, eq(chatSessions.id, chatMessages.sessionId))
      .where(
        and(
          eq(chatMessages.sessionId, sessionId),
          ownedSession(owner, sessionId),
          beforeSeq === undefined ? undefined : sql`${chatMessages.seq} < ${beforeSeq}`,
          only,
        ),
      )
      .orderBy(desc(chatMessages.seq))
      .limit(limit + 1),
  );
  // For each of them, newest first: its place, the text up to and including it, and how many
  // there are in all.
  const measured = db.$with('measured').as(
    db
      .select({
        id: newest.id,
        place: sql<number>`row_number() over (order by ${newest.seq} desc)`.as('place'),
        sizeSoFar: sql<number>`sum(${newest.size}) over (order by ${newest.seq} desc)`.as('size_so_far'),
        found: sql<number>`count(*) over ()`.mapWith(Number).as('found'),
      })
      .from(newest),
  );
  const rows = await db
    .with(newest, measured)
    .select({ ...messageColumns, found: measured.found })
    .from(measured)
    .innerJoin(chatMessages, eq(chatMessages.id, measured.id))
    .where(sql`${measured.place} = 1 or ${measured.sizeSoFar} <= ${maxSize}`)
    .orderBy(desc(chatMessages.seq))
    .limit(limit);
  const found = rows[0]?.found ?? 0;
  const messages = rows.map(({ found: _found, ...message }) => message).reverse();
  return { messages, hasMore: found > messages.length };
}

const TITLE_MAX_CHARACTERS = 50;

/**
 * A session title from a message's opening words: whitespace collapsed, cut at a word boundary
 * near 50 characters (counted as code points, so no emoji is split), with `…` when cut.
 */
export function titleFromMessage(content: string): string {
  const words = content.trim().split(/\s+/u);
  let title = '';
  for (const word of words) {
    const next = title ? `${title} ${word}` : word;
    if ([...next].length > TITLE_MAX_CHARACTERS) {
      if (!title) title = [...word].slice(0, TITLE_MAX_CHARACTERS).join('');
      return `${title}…`;
    }
    title = next;
  }
  return title || DEFAULT_SESSION_TITLE;
}
