import { setTimeout as delay } from 'node:timers/promises';
import type { LanguageModelV3 } from '@ai-sdk/provider';
import { streamText } from 'ai';
import type { ReplyFailure } from '../db/chat-events.js';
import type { ReplyToStore, SessionOwner, StoredMessageRow, TokenUsage } from '../db/chat.js';
import type { Database } from '../db/database.js';
import { appendToReply, failAbandonedReplies, finishReply, getConversationForReply } from '../db/replies.js';
import { isDatabaseUnavailable } from '../db/errors.js';
import { createInFlightLimit } from './in-flight-limit.js';
import type { Logger } from './logger.js';

export interface ReplyRunnerOptions {
  db: Database;
  log: Logger;
  model: LanguageModelV3;
  /** The name replies are stored and metered under (`LLM_MODEL`). */
  modelName: string;
  systemPrompt: string;
  /** The longest wait for the provider's first or next piece of text (`LLM_TIMEOUT_MS`). */
  timeoutMs: number;
  /** Replies this instance writes at once (`LLM_MAX_CONCURRENT_REPLIES`). */
  maxConcurrentReplies: number;
  /** Replies streaming at once in one organization, across instances. */
  maxRepliesPerOrganization: number;
  /** Replies one person has at once: streaming in one organization, and being written in this instance. */
  maxRepliesPerPerson: number;
  /** Tokens asked of the provider at most (`max_tokens`); the text stored stops at 8 characters a token. */
  maxOutputTokens: number;
  /** The longest a reply may stream, however steadily its text comes. */
  maxReplyMs: number;
  /** What the model is given of the conversation: at most this many messages and characters. */
  context: { maxMessages: number; maxCharacters: number };
  /**
   * A reply whose instance has not renewed it for this long is marked failed by any instance
   * (default 30 s); each instance looks for such replies every third of it.
   */
  leaseMs?: number;
  /** Told how each reply this instance wrote ended, with the tokens the provider reported (metrics). */
  onEnded?: (outcome: ReplyOutcome, usage: TokenUsage | undefined) => void;
}

/**
 * How a reply ended: `complete`, `cut` at its length limit (also complete), `ended_elsewhere`
 * (stopped, deleted with its session, or ended by another instance), failed for one of
 * `ReplyFailure`'s reasons, or `not_stored` (its end could not be written; it fails when its lease passes).
 */
export type ReplyOutcome = 'complete' | 'cut' | 'ended_elsewhere' | ReplyFailure | 'not_stored';

export const DEFAULT_REPLY_LEASE_MS = 30_000;
/** Text received within this long of the last write goes into the database together. */
const WRITE_EVERY_MS = 50;
const WRITE_RETRY_MS = 1_000;
const FINISH_ATTEMPTS = 3;
/**
 * While the provider is silent, a writer checks this often that its reply still streams (the
 * write that renews its lease tells): stopped on another instance, it stops asking the provider.
 */
const STILL_STREAMING_CHECK_MS = 1_000;
/** A provider that ignores `max_tokens` is cut off at this many characters a token. */
const CHARACTERS_PER_TOKEN_CAP = 8;

/** Why this instance stopped a reply itself (the abort reason). */
const aborted = {
  timeout: new Error('The provider sent no text in time, or streamed for longer than a reply may'),
  /** The text reached its cap: the reply ends complete, as with the provider's own `max_tokens`. */
  long: new Error('The reply reached its length limit'),
  /** The server is shutting down, or could not read the conversation: the reply ends as interrupted. */
  interrupted: new Error('The server could not go on with the reply'),
  /** Stopped, deleted with its session, or marked failed elsewhere: nothing more to write. */
  gone: new Error('The reply no longer streams'),
};

/**
 * Writes assistant replies: after `sendMessage` has stored the person's message and the reply's
 * empty `streaming` message, `run` asks the model and stores its text as it arrives, in writes
 * at most every 50 ms, each a `reply.delta` event. The reply ends `complete` or `failed`; a person's
 * stop, or the session's deletion, ends it in the database, and the writer stops at its next write.
 *
 * Each streaming reply holds a lease in its row, renewed by the instance writing it. An instance
 * that dies stops renewing, and any instance (its own restart included) marks such replies failed.
 */
export function createReplyRunner(options: ReplyRunnerOptions) {
  const { db, log } = options;
  const leaseMs = options.leaseMs ?? DEFAULT_REPLY_LEASE_MS;
  const running = new Map<string, { sessionId: string; controller: AbortController; done: Promise<void> }>();
  const checkEveryMs = Math.min(leaseMs / 4, STILL_STREAMING_CHECK_MS);
  const maxCharacters = options.maxOutputTokens * CHARACTERS_PER_TOKEN_CAP;
  const perPerson = createInFlightLimit(options.maxRepliesPerPerson);
  let places = 0;
  let drained: (() => void) | undefined;
  let sweeper: AbandonedReplySweeper | undefined;
  let closed = false;

  const toStore: ReplyToStore = {
    model: options.modelName,
    leaseMs,
    maxPerOrganization: options.maxRepliesPerOrganization,
    maxPerPerson: options.maxRepliesPerPerson,
  };

  async function write(owner: SessionOwner, reply: StoredMessageRow, controller: AbortController) {
    const ids = { ...owner, sessionId: reply.sessionId, messageId: reply.id };
    const startedAt = Date.now();
    /** Received and not yet stored. */
    let pending = '';
    let lastWrite = 0;
    /** When a write last succeeded, renewing the lease. */
    let lastStored = Date.now();
    let ended = false;
    let gone = false;
    let writing: Promise<void> | undefined;

    async function storePending() {
      while (!gone) {
        const wait = lastWrite + WRITE_EVERY_MS - Date.now();
        if (wait > 0) await delay(wait);
        // Once the stream has ended, `finishReply` stores the rest in the same write as the end.
        if (ended) return;
        const text = pending;
        // With nothing to add, a write only renews the lease and learns whether the reply still streams.
        if (!text && Date.now() - lastStored < checkEveryMs) return;
        pending = '';
        lastWrite = Date.now();
        try {
          if (!(await appendToReply(db, { ...ids, text, leaseMs }))) stopWriting();
          lastStored = Date.now();
        } catch (error) {
          pending = text + pending;
          // A write that cannot succeed (the membership gone, say), or a lease surely taken over by now.
          if (!isDatabaseUnavailable(error) || Date.now() - lastStored > leaseMs) {
            log.error({ ...ids, err: error }, 'Could not store reply text; the reply is left to fail when its lease passes');
            stopWriting();
            return;
          }
          log.warn({ ...ids, err: error }, 'Could not store reply text; trying again');
          await delay(WRITE_RETRY_MS);
        }
        if (!pending) return;
      }
    }
    const store = () => {
      writing ??= storePending().finally(() => {
        writing = undefined;
      });
    };
    function stopWriting() {
      gone = true;
      controller.abort(aborted.gone);
    }

    const renew = setInterval(store, checkEveryMs);
    const tooLong = setTimeout(() => controller.abort(aborted.timeout), options.maxReplyMs);
    let received = 0;
    let idle: NodeJS.Timeout | undefined;
    const waitForText = () => {
      clearTimeout(idle);
      idle = setTimeout(() => controller.abort(aborted.timeout), options.timeoutMs);
    };
    let usage: TokenUsage | undefined;
    let failure: ReplyFailure | undefined;
    let cut = false;
    try {
      const conversation = await getConversationForReply(db, { ...ids, beforeSeq: reply.seq, ...options.context }).catch(
        (error: unknown) => {
          log.error({ ...ids, err: error }, 'Could not read the conversation for a reply');
          controller.abort(aborted.interrupted);
          throw error;
        },
      );
      // Started after a shutdown began (a message stored while the server was closing): ends at once.
      if (controller.signal.aborted) throw controller.signal.reason;
      waitForText();
      const result = streamText({
        model: options.model,
        system: options.systemPrompt,
        messages: conversation,
        abortSignal: controller.signal,
        maxOutputTokens: options.maxOutputTokens,
        // A failed reply is shown as failed: the person sends again, rather than waiting on retries.
        maxRetries: 0,
        // Reported through the stream below; the SDK's default prints it, request and all, to stderr.
        onError: () => {},
      });
      for await (const part of result.fullStream) {
        if (part.type === 'text-delta') {
          waitForText();
          const text = storable(part.text).slice(0, maxCharacters - received);
          received += text.length;
          pending += text;
          store();
          if (received >= maxCharacters) controller.abort(aborted.long);
        } else if (part.type === 'reasoning-delta') {
          waitForText();
        } else if (part.type === 'error') {
          throw part.error;
        } else if (part.type === 'finish') {
          usage = { inputTokens: part.totalUsage.inputTokens, outputTokens: part.totalUsage.outputTokens };
          // A stream that ends without a finish_reason was cut short, not finished.
          if (part.rawFinishReason === undefined) throw new Error('The provider ended the stream without a finish_reason');
        }
      }
      if (controller.signal.aborted) throw controller.signal.reason;
    } catch (error) {
      const reason = controller.signal.aborted ? controller.signal.reason : undefined;
      if (reason === aborted.gone) gone = true;
      else if (reason === aborted.long) {
        cut = true;
        log.warn(ids, 'Reply cut at its length limit');
      }
      else {
        failure = reason === aborted.timeout ? 'timeout' : reason === aborted.interrupted ? 'interrupted' : 'provider_error';
        log.warn({ ...ids, reason: failure, provider: failure === 'provider_error' ? describeProviderError(error) : undefined }, 'Reply failed');
      }
    } finally {
      clearTimeout(idle);
      clearTimeout(tooLong);
      clearInterval(renew);
      ended = true;
    }
    await writing;
    const report = (outcome: ReplyOutcome) => options.onEnded?.(outcome, usage);
    if (gone) {
      log.info(ids, 'Reply ended elsewhere (stopped, or its session deleted)');
      return report('ended_elsewhere');
    }
    // The end is worth a few tries: without it a complete reply would be failed once its lease passes.
    for (let attempt = 1; ; attempt++) {
      try {
        const message = await finishReply(db, { ...ids, text: pending, usage, failure });
        if (message && !failure) {
          log.info({ ...ids, model: options.modelName, ...usage, durationMs: Date.now() - startedAt }, 'Reply completed');
        }
        return report(!message ? 'ended_elsewhere' : (failure ?? (cut ? 'cut' : 'complete')));
      } catch (error) {
        if (attempt === FINISH_ATTEMPTS) {
          log.error({ ...ids, err: error }, 'Could not store the end of a reply; it is marked failed once its lease passes');
          return report('not_stored');
        }
        log.warn({ ...ids, err: error }, 'Could not store the end of a reply; trying again');
        await delay(WRITE_RETRY_MS * attempt);
      }
    }
  }

  return {
    /** What `addMessageToSession` stores with a message to start its reply. */
    toStore,
    /**
     * A place for one more reply of `person` in this instance, or why there is none: the instance
     * is closing, or writes as many replies as it may, in all or for them (a writer still winding
     * down after a stop counts). Release it if no reply was stored; `run` releases it when the reply ends.
     */
    reserve(person: string): { release: () => void } | { refused: 'closing' | 'instance' | 'person' } {
      if (closed) return { refused: 'closing' };
      if (places >= options.maxConcurrentReplies) return { refused: 'instance' };
      const leave = perPerson.enter(person);
      if (!leave) return { refused: 'person' };
      places += 1;
      let released = false;
      return {
        release() {
          if (released) return;
          released = true;
          leave();
          places -= 1;
          if (places === 0) drained?.();
        },
      };
    },
    /** Writes the reply stored by `addMessageToSession`, in the background. */
    run(owner: SessionOwner, reply: StoredMessageRow, release: () => void) {
      const controller = new AbortController();
      // Its message was stored while the server was closing: the reply ends at once, as interrupted.
      if (closed) controller.abort(aborted.interrupted);
      const done = write(owner, reply, controller)
        .catch((error: unknown) => log.error({ ...owner, messageId: reply.id, err: error }, 'Reply writer failed'))
        .finally(() => {
          running.delete(reply.id);
          release();
        });
      running.set(reply.id, { sessionId: reply.sessionId, controller, done });
    },
    /** Stops writing this reply here, after it was stopped in the database. */
    cancel(messageId: string) {
      running.get(messageId)?.controller.abort(aborted.gone);
    },
    /** Stops writing the replies of a session deleted in the database. */
    cancelSession(sessionId: string) {
      for (const reply of running.values()) if (reply.sessionId === sessionId) reply.controller.abort(aborted.gone);
    },
    /** Marks failed, now and every third of a lease, the replies of instances that stopped. */
    async start() {
      sweeper = await startSweepingAbandonedReplies({ db, log, leaseMs });
    },
    /**
     * Ends the replies being written here as failed (`interrupted`), keeping their text, and those
     * whose messages are still being stored; resolves once every place is given back.
     */
    async close() {
      closed = true;
      for (const reply of running.values()) reply.controller.abort(aborted.interrupted);
      if (places > 0) await new Promise<void>((resolve) => (drained = resolve));
      await sweeper?.stop();
    },
    /** Replies being written here now. */
    get running() {
      return running.size;
    },
  };
}

export type ReplyRunner = ReturnType<typeof createReplyRunner>;

export type AbandonedReplySweeper = Awaited<ReturnType<typeof startSweepingAbandonedReplies>>;

/**
 * Marks failed (`interrupted`), now and every third of `leaseMs`, the replies whose instance
 * stopped renewing their lease. Every instance runs it, also one without an assistant
 * (`ASSISTANT_REPLIES=off`), which may follow a deployment that had one.
 */
export async function startSweepingAbandonedReplies({ db, log, leaseMs }: { db: Database; log: Logger; leaseMs: number }) {
  async function sweep() {
    try {
      for (const { owner, message } of await failAbandonedReplies(db)) {
        log.warn({ ...owner, sessionId: message.sessionId, messageId: message.id }, 'Marked failed a reply whose instance stopped writing it');
      }
    } catch (error) {
      log.warn({ err: error }, 'Could not look for abandoned replies');
    }
  }
  let sweeping: Promise<void> | undefined;
  await sweep();
  const timer = setInterval(() => {
    sweeping ??= sweep().finally(() => {
      sweeping = undefined;
    });
  }, leaseMs / 3);
  timer.unref();
  return {
    async stop() {
      clearInterval(timer);
      await sweeping;
    },
  };
}

/**
 * Text PostgreSQL stores as it is: a NUL (text refuses it) or a lone UTF-16 surrogate (jsonb
 * refuses it) from the provider becomes U+FFFD, rather than making every write of the reply fail.
 */
const storable = (text: string) => text.replace(/[\u0000\p{Surrogate}]/gu, '\uFFFD');

/**
 * What the log keeps of a provider's error: its kind, the URL called, the HTTP status and the
 * provider's own error type and code, with a hint at the setting to check. Not its message, nor
 * the response or request: those can quote the conversation (a malformed chunk, a validation error
 * echoing the input) or part of the key.
 */
function describeProviderError(error: unknown) {
  if (!(error instanceof Error)) return { name: typeof error };
  const { statusCode, data, cause, url } = error as { statusCode?: number; data?: unknown; cause?: unknown; url?: unknown };
  const detail = (data as { error?: { type?: unknown; code?: unknown } } | undefined)?.error;
  const causeCode = cause instanceof Error ? ((cause as NodeJS.ErrnoException).code ?? cause.name) : undefined;
  return {
    name: error.name,
    url: typeof url === 'string' ? url : undefined,
    statusCode,
    type: typeof detail?.type === 'string' ? detail.type : undefined,
    code: typeof detail?.code === 'string' || typeof detail?.code === 'number' ? detail.code : undefined,
    cause: causeCode,
    hint: hintFor(statusCode, causeCode),
  };
}

function hintFor(statusCode: number | undefined, causeCode: string | undefined) {
  if (statusCode === 401 || statusCode === 403) return 'check LLM_API_KEY';
  if (statusCode === 404) return 'check LLM_BASE_URL (it ends at /v1, not at /chat/completions) and LLM_MODEL';
  if (statusCode === 429) return 'the provider is rate-limiting this key';
  if (statusCode === undefined && causeCode) return 'check that LLM_BASE_URL is reachable from this server';
  return undefined;
}
