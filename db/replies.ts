import { and, eq, gte, inArray, lt, sql } from 'drizzle-orm';
import type { ReplyFailure } from './chat-events.js';
import {
  type SessionOwner,
  type StoredMessageRow,
  type TokenUsage,
  endAbandonedReplies,
  endReplies,
  getMessagesBySessionId,
  leasePassed,
  ownedSession,
  streamingReply,
  writeChats,
} from './chat.js';
import type { Database } from './database.js';
import { chatMessages, chatSessions, replyUsage } from './schema.js';

const leaseFromNow = (leaseMs: number) => sql`now() + ${leaseMs} * interval '1 millisecond'`;

/**
 * Appends `text` to a streaming reply, records it as `reply.delta` and renews the reply's lease
 * (with no text, only the lease). `false` when the reply no longer streams: stopped, deleted with
 * its session, or marked failed by another instance; its writer should stop.
 */
export function appendToReply(
  db: Database,
  { messageId, sessionId, text, leaseMs, ...owner }: SessionOwner & { messageId: string; sessionId: string; text: string; leaseMs: number },
): Promise<boolean> {
  return writeChats(db, owner, async (tx, events) => {
    const [reply] = await tx
      .update(chatMessages)
      .set({ content: sql`${chatMessages.content} || ${text}`, leaseExpiresAt: leaseFromNow(leaseMs) })
      .where(streamingReply(owner, { messageId, sessionId }))
      .returning({ id: chatMessages.id });
    if (reply && text) await events.record([{ type: 'reply.delta', messageId, sessionId, text }]);
    return reply !== undefined;
  });
}

/**
 * Ends a streaming reply with the rest of its text: `complete`, or `failed` for `reason`. Records
 * `reply.completed` or `reply.failed` and the reply's usage. `undefined` when it no longer streams.
 */
export function finishReply(
  db: Database,
  {
    messageId,
    sessionId,
    text,
    usage,
    failure,
    ...owner
  }: SessionOwner & { messageId: string; sessionId: string; text: string; usage: TokenUsage | undefined; failure: ReplyFailure | undefined },
): Promise<StoredMessageRow | undefined> {
  return writeChats(db, owner, async (tx, events) => {
    const [reply] = await endReplies(tx, events, owner, streamingReply(owner, { messageId, sessionId }), {
      status: failure ? 'failed' : 'complete',
      text,
      usage,
      failure,
    });
    return reply;
  });
}

/**
 * Stops the session's streaming reply, keeping the text stored so far (`stopped`, announced as
 * `reply.completed`). `null` when none was streaming; `undefined` when the owner has no such session.
 */
export async function stopReplyInSession(
  db: Database,
  { sessionId, ...owner }: SessionOwner & { sessionId: string },
): Promise<StoredMessageRow | null | undefined> {
  return writeChats(db, owner, async (tx, events) => {
    const [session] = await tx.select({ id: chatSessions.id }).from(chatSessions).where(ownedSession(owner, sessionId));
    if (!session) return undefined;
    const [reply] = await endReplies(tx, events, owner, streamingReply(owner, { sessionId }), { status: 'stopped' });
    return reply ?? null;
  });
}

/**
 * Marks failed (`interrupted`) the streaming replies whose lease has passed: their instance
 * stopped renewing them, so it is gone. At most `limit` at a time; returns them with their owners.
 * Safe on every instance at once: each reply is re-checked under its owner's lock.
 */
export async function failAbandonedReplies(db: Database, { limit = 100 } = {}) {
  const abandoned = await db
    .select({ id: chatMessages.id, sessionId: chatMessages.sessionId, userId: chatSessions.userId, organizationId: chatSessions.organizationId })
    .from(chatMessages)
    .innerJoin(chatSessions, eq(chatSessions.id, chatMessages.sessionId))
    .where(and(eq(chatMessages.status, 'streaming'), leasePassed))
    .limit(limit);
  const failed: { owner: SessionOwner; message: StoredMessageRow }[] = [];
  for (const { id, sessionId, ...owner } of abandoned) {
    const [message] = await writeChats(db, owner, (tx, events) => endAbandonedReplies(tx, events, owner, { sessionId, messageId: id }));
    if (message) failed.push({ owner, message });
  }
  return failed;
}

/**
 * What the model is given of the conversation: the session's messages before `beforeSeq` that
 * were answered or written in full (`complete`) or in part (`stopped`), newest first up to
 * `maxMessages` and `maxCharacters` (the newest is always given), returned oldest first.
 */
export async function getConversationForReply(
  db: Database,
  {
    sessionId,
    beforeSeq,
    maxMessages,
    maxCharacters,
    ...owner
  }: SessionOwner & { sessionId: string; beforeSeq: number; maxMessages: number; maxCharacters: number },
) {
  const { messages } = await getMessagesBySessionId(db, {
    ...owner,
    sessionId,
    beforeSeq,
    limit: maxMessages,
    maxCharacters,
    only: and(
      inArray(chatMessages.role, ['user', 'assistant']),
      inArray(chatMessages.status, ['complete', 'stopped']),
      sql`${chatMessages.content} <> ''`,
    ),
  });
  return messages.map(({ role, content }) => ({ role: role as 'user' | 'assistant', content }));
}

/**
 * The organization's replies and tokens from `from` (inclusive) to `to` (exclusive), per calendar
 * month (UTC), per user and per model (models are priced apart), in that order, `limit` rows at a
 * time after `after`.
 */
export async function getUsageByOrganization(
  db: Database,
  {
    organizationId,
    from,
    to,
    limit,
    after,
  }: { organizationId: string; from: Date; to: Date; limit: number; after?: { month: string; userId: string; model: string } | undefined },
) {
  const month = sql<string>`to_char(date_trunc('month', ${replyUsage.createdAt} at time zone 'UTC'), 'YYYY-MM')`;
  const rows = await db
    .select({
      month,
      userId: replyUsage.userId,
      model: replyUsage.model,
      replies: sql<number>`count(*)`.mapWith(Number),
      inputTokens: sql<number>`coalesce(sum(${replyUsage.inputTokens}), 0)`.mapWith(Number),
      outputTokens: sql<number>`coalesce(sum(${replyUsage.outputTokens}), 0)`.mapWith(Number),
    })
    .from(replyUsage)
    .where(and(eq(replyUsage.organizationId, organizationId), gte(replyUsage.createdAt, from), lt(replyUsage.createdAt, to)))
    .groupBy(month, replyUsage.userId, replyUsage.model)
    .having(after && sql`(${month}, ${replyUsage.userId}, ${replyUsage.model}) > (${after.month}, ${after.userId}, ${after.model})`)
    .orderBy(month, replyUsage.userId, replyUsage.model)
    .limit(limit + 1);
  return { usage: rows.slice(0, limit), hasMore: rows.length > limit };
}
