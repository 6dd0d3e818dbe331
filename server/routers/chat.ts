import { TRPCError } from '@trpc/server';
import { z } from 'zod';
import {
  activateSessionById,
  addMessageToSession,
  createActiveSession,
  deleteSessionById,
  getMessagesBySessionId,
  getOrCreateActiveSession,
  getSessionById,
  type SessionOwner,
  getSessionsByOwner,
  type Message,
  renameSessionById,
  type StoredMessageRow,
  titleFromMessage,
} from '../../db/chat.js';
import { stopReplyInSession } from '../../db/replies.js';
import type { Member } from '../member-cache.js';
import { protectedProcedure, router, unavailable } from '../trpc.js';

/** Length in characters as people count them (code points), as PostgreSQL's `char_length` does. */
const characters = (value: string) => [...value].length;

// With the `u` flag a surrogate pair is one code point, so only a lone half matches.
const loneSurrogate = /\p{Surrogate}/u;

/**
 * Text PostgreSQL can store as given: no NUL (text columns refuse it) and no lone UTF-16
 * surrogate (it would be stored as U+FFFD, changing what was sent). With `trim`, the limits
 * apply to the trimmed text, which is what gets stored.
 */
function storableText({ max, label, trim }: { max: number; label: string; trim: boolean }) {
  return (trim ? z.string().trim() : z.string())
    .refine((value) => !loneSurrogate.test(value), `${label} is not valid Unicode text`)
    .refine((value) => !value.includes('\u0000'), `${label} must not contain NUL characters`)
    .refine((value) => value.trim().length > 0, `${label} must not be empty`)
    .refine((value) => characters(value) <= max, `${label} must be at most ${max} characters`);
}

const title = storableText({ max: 200, label: 'Title', trim: true });
// Stored as sent: leading spaces or newlines can matter in a message (code, lists).
const content = storableText({ max: 32_000, label: 'Content', trim: false });
const sessionId = z.uuid();
const cursor = z.string().max(512).nullish();

const sessionCursor = z.object({ updatedAt: z.iso.datetime().transform((value) => new Date(value)), id: z.uuid() });
const messageCursor = z.object({ seq: z.number().int().positive() });

/** Whose sessions a call may touch: the caller in their current organization, in every query's `WHERE`. */
const ownerOf = ({ user, organization }: Member): SessionOwner => ({ userId: user.id, organizationId: organization.id });

/** Pages and writes count against the caller's heavy calls in progress (`HEAVY_CALLS_PER_PERSON`). */
const heavy = { heavy: true };
/** Writes also count against the caller's writes a minute (`RATE_LIMIT_WRITES_PER_MINUTE`). */
const write = { heavy: true, write: true };

/** A message as callers see it: `seq` stays inside (cursors hold it, signed). */
const withoutSeq = ({ seq: _seq, ...message }: StoredMessageRow): Message => message;

const tooManyOfYourReplies = () =>
  new TRPCError({ code: 'TOO_MANY_REQUESTS', message: 'You have too many replies in progress; wait for one to end or stop it' });

function sessionNotFound(): never {
  // The same answer for a session that does not exist and one that is not the caller's.
  throw new TRPCError({ code: 'NOT_FOUND', message: 'Chat session not found' });
}

export const chatRouter = router({
  /** The caller's active session in this organization, created (titled `New Chat`) when there is none. */
  getActiveSession: protectedProcedure.query(async ({ ctx }) => {
    const owner = ownerOf(ctx);
    const { session, created } = await getOrCreateActiveSession(ctx.db, owner);
    if (created) ctx.log.info({ ...owner, sessionId: session.id }, 'Created new active session');
    return session;
  }),

  /** A new session, now the active one; the previously active one becomes inactive. */
  createSession: protectedProcedure
    .meta(write)
    .input(z.object({ title: title.optional() }).optional())
    .mutation(async ({ ctx, input }) => {
      const owner = ownerOf(ctx);
      const session = await createActiveSession(ctx.db, { ...owner, title: input?.title });
      ctx.log.info({ ...owner, sessionId: session.id }, 'Created session');
      return session;
    }),

  /** The caller's sessions, most recent activity first. */
  listSessions: protectedProcedure
    .meta(heavy)
    .input(
      z
        .object({ limit: z.number().int().min(1).max(100).default(20), cursor })
        .default({ limit: 20 }),
    )
    .query(async ({ ctx, input }) => {
      const owner = ownerOf(ctx);
      const scope = `chat.listSessions:${owner.userId}:${owner.organizationId}`;
      const before = input.cursor ? ctx.cursors.decode(scope, sessionCursor, input.cursor) : undefined;
      const { sessions, hasMore } = await getSessionsByOwner(ctx.db, { ...owner, limit: input.limit, before });
      const last = sessions.at(-1);
      return {
        items: sessions,
        nextCursor: hasMore && last ? ctx.cursors.encode(scope, { updatedAt: last.updatedAt, id: last.id }) : null,
      };
    }),

  getSession: protectedProcedure
    .input(z.object({ sessionId }))
    .query(async ({ ctx, input }) => {
      const owner = ownerOf(ctx);
      return (await getSessionById(ctx.db, { ...owner, id: input.sessionId })) ?? sessionNotFound();
    }),

  /** Makes the session the only active one. */
  setActiveSession: protectedProcedure
    .meta(write)
    .input(z.object({ sessionId }))
    .mutation(async ({ ctx, input }) => {
      const owner = ownerOf(ctx);
      return (await activateSessionById(ctx.db, { ...owner, id: input.sessionId })) ?? sessionNotFound();
    }),

  renameSession: protectedProcedure
    .meta(write)
    .input(z.object({ sessionId, title }))
    .mutation(async ({ ctx, input }) => {
      const owner = ownerOf(ctx);
      const session = await renameSessionById(ctx.db, { ...owner, id: input.sessionId, title: input.title });
      return session ?? sessionNotFound();
    }),

  /** Deletes the session and its messages. When it was active, none is until `getActiveSession` makes one. */
  deleteSession: protectedProcedure
    .meta(write)
    .input(z.object({ sessionId }))
    .mutation(async ({ ctx, input }) => {
      const owner = ownerOf(ctx);
      if (!(await deleteSessionById(ctx.db, { ...owner, id: input.sessionId }))) sessionNotFound();
      // Its reply went with it; stop asking the provider for more.
      ctx.replies?.cancelSession(input.sessionId);
      ctx.log.info({ ...owner, sessionId: input.sessionId }, 'Deleted session');
      return { sessionId: input.sessionId };
    }),

  /**
   * Stores the caller's message (the first one titles a session still called `New Chat`) and
   * starts the assistant's reply: `reply` is its message, `streaming` and empty, whose text
   * arrives on `chat.events` (`reply.delta`, then `reply.completed` or `reply.failed`). `reply` is
   * null when the server runs without an assistant. While a reply streams in the session: CONFLICT.
   */
  sendMessage: protectedProcedure
    .meta(write)
    .input(z.object({ sessionId, content }))
    .mutation(async ({ ctx, input }) => {
      const owner = ownerOf(ctx);
      const { replies } = ctx;
      // A place among this instance's replies first: refused, nothing is stored.
      const place = replies?.reserve(ctx.user.id);
      if (place && 'refused' in place) {
        if (place.refused === 'closing') throw unavailable(new Error('The server is shutting down'));
        throw place.refused === 'person' ? tooManyOfYourReplies() : new TRPCError({ code: 'TOO_MANY_REQUESTS', message: 'The assistant is answering too many messages; try again shortly' });
      }
      const release = place?.release;
      let started = false;
      try {
        const result = await addMessageToSession(ctx.db, {
          ...owner,
          sessionId: input.sessionId,
          role: 'user',
          content: input.content,
          titleIfFirst: titleFromMessage(input.content),
          reply: replies?.toStore,
        });
        switch (result.status) {
          case 'no_session':
            return sessionNotFound();
          case 'reply_streaming':
            throw new TRPCError({ code: 'CONFLICT', message: 'The assistant is still replying in this session; wait for it or stop it' });
          case 'organization_busy':
            throw new TRPCError({
              code: 'TOO_MANY_REQUESTS',
              message: 'Your organization has too many replies in progress; try again shortly',
            });
          case 'person_busy':
            throw tooManyOfYourReplies();
        }
        if (result.reply && replies && release) {
          replies.run(owner, result.reply, release);
          started = true;
          ctx.log.info({ ...owner, sessionId: input.sessionId, messageId: result.reply.id }, 'Reply started');
        }
        return { message: withoutSeq(result.message), reply: result.reply && withoutSeq(result.reply) };
      } finally {
        if (!started) release?.();
      }
    }),

  /**
   * Stops the session's reply, keeping its text so far (`status: 'stopped'`, announced as
   * `reply.completed`), and returns it; null when no reply was streaming.
   */
  stopReply: protectedProcedure
    .meta(write)
    .input(z.object({ sessionId }))
    .mutation(async ({ ctx, input }) => {
      const owner = ownerOf(ctx);
      const stopped = await stopReplyInSession(ctx.db, { ...owner, sessionId: input.sessionId });
      if (stopped === undefined) sessionNotFound();
      if (stopped === null) return null;
      // Written here: stop asking the provider now. Written elsewhere: that instance stops at its next write.
      ctx.replies?.cancel(stopped.id);
      ctx.log.info({ ...owner, sessionId: input.sessionId, messageId: stopped.id }, 'Reply stopped');
      return withoutSeq(stopped);
    }),

  /**
   * Live changes to the caller's sessions and messages in this organization, each `tracked()`
   * with an id in the order they committed. Reconnecting with the last id seen (tRPC's client
   * sends it as `lastEventId`) replays exactly the events missed, from any instance, for
   * `CHAT_EVENTS_RETENTION_MINUTES`; past that, or for an id not given out, `resync` says to load
   * the lists again. Ends with UNAUTHORIZED (`authReason: 'expired'`) at the token's `exp`.
   */
  events: protectedProcedure
    .input(z.object({ lastEventId: z.string().max(64).nullish() }).optional())
    .subscription(({ ctx, input, signal }) =>
      ctx.chatEvents.subscribe({
        owner: ownerOf(ctx),
        lastEventId: input?.lastEventId,
        expiresAt: ctx.auth.expiresAt,
        signal,
      }),
    ),

  /**
   * The newest `limit` messages (older than `cursor` when given), oldest first; `nextCursor`
   * fetches the page before them and is null at the start of the conversation.
   */
  listMessages: protectedProcedure
    .meta(heavy)
    .input(z.object({ sessionId, limit: z.number().int().min(1).max(100).default(50), cursor }))
    .query(async ({ ctx, input }) => {
      const owner = ownerOf(ctx);
      const scope = `chat.listMessages:${input.sessionId}`;
      const before = input.cursor ? ctx.cursors.decode(scope, messageCursor, input.cursor) : undefined;
      const { messages, hasMore } = await getMessagesBySessionId(ctx.db, {
        ...owner,
        sessionId: input.sessionId,
        limit: input.limit,
        beforeSeq: before?.seq,
      });
      // An empty page: an empty conversation, or no session of the caller's.
      if (messages.length === 0 && !(await getSessionById(ctx.db, { ...owner, id: input.sessionId }))) {
        sessionNotFound();
      }
      const oldest = messages[0];
      return {
        items: messages.map(withoutSeq),
        nextCursor: hasMore && oldest ? ctx.cursors.encode(scope, { seq: oldest.seq }) : null,
      };
    }),
});
