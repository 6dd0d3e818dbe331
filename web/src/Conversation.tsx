import { useInfiniteQuery, useMutation, useQueryClient } from '@tanstack/react-query';
import { useEffect, useLayoutEffect, useRef, useState } from 'react';
import { type Message, codeOf, useTRPC } from './api.js';
import { MESSAGES_PAGE, upsertMessage } from './chat-cache.js';
import { ErrorNotice } from './errors.js';

/** One conversation: older pages load as you scroll up; the assistant's reply streams in, with stop. */
export function Conversation({ sessionId, onGone }: { sessionId: string; onGone: (sessionId: string) => void }) {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const input = { sessionId, limit: MESSAGES_PAGE };
  const messages = useInfiniteQuery(trpc.chat.listMessages.infiniteQueryOptions(input, { getNextPageParam: (page) => page.nextCursor }));
  const send = useMutation(
    trpc.chat.sendMessage.mutationOptions({
      onSuccess: ({ message, reply }) => {
        // Events may have brought them first, and the reply's text since: what is there is kept.
        for (const added of reply ? [message, reply] : [message]) {
          queryClient.setQueryData(trpc.chat.listMessages.infiniteQueryKey(input), (data) => upsertMessage(data, added, { keep: true }));
        }
      },
    }),
  );
  const stop = useMutation(trpc.chat.stopReply.mutationOptions());
  const [draft, setDraft] = useState('');
  // Deleted while its deletion went unseen (the stream was down): the page moves on.
  useEffect(() => {
    if (codeOf(messages.error) === 'NOT_FOUND') onGone(sessionId);
  }, [messages.error, onGone, sessionId]);

  // Pages come newest first, each oldest first: the conversation reads the other way round.
  const items: Message[] = [...(messages.data?.pages ?? [])].reverse().flatMap((page) => page.items);
  const streaming = items.some((message) => message.status === 'streaming');

  const scroller = useRef<HTMLDivElement>(null);
  // Where the view was after the last render or scroll. At the bottom, it follows new messages;
  // elsewhere it stays on what it shows: moved by what older pages added above, and by nothing else.
  const view = useRef<{ height: number; top: number; atBottom: boolean; firstId: string | undefined } | null>(null);
  const record = () => {
    const box = scroller.current;
    if (box) view.current = { height: box.scrollHeight, top: box.scrollTop, atBottom: box.scrollHeight - box.scrollTop - box.clientHeight < 40, firstId: items[0]?.id };
  };
  const loadOlder = () => {
    if (messages.hasNextPage && !messages.isFetchingNextPage && !messages.isFetchNextPageError) void messages.fetchNextPage();
  };
  const filledFor = useRef(-1);
  useLayoutEffect(() => {
    const box = scroller.current;
    if (!box) return;
    const before = view.current;
    if (!before || before.atBottom) box.scrollTop = box.scrollHeight;
    else if (before.firstId !== undefined && items[0]?.id !== before.firstId) box.scrollTop = before.top + (box.scrollHeight - before.height);
    record();
    // A first page that does not fill the view gives nothing to scroll: the next one loads now
    // (once for each number of messages, so that a failing page is not asked for again and again).
    if (box.scrollHeight <= box.clientHeight && filledFor.current !== items.length) {
      filledFor.current = items.length;
      loadOlder();
    }
  });

  return (
    <section className="conversation">
      <div
        className="messages"
        ref={scroller}
        data-testid="messages"
        onScroll={(event) => {
          record();
          if (event.currentTarget.scrollTop < 40) loadOlder();
        }}
      >
        {messages.isFetchingNextPage && <p className="notice">Loading older messages…</p>}
        {messages.isPending && <p className="notice">Loading…</p>}
        {messages.error && <ErrorNotice error={messages.error} retry={() => void messages.refetch()} />}
        {messages.isSuccess && items.length === 0 && <p className="notice">No messages yet. Say something.</p>}
        {items.map((message) => (
          <article key={message.id} className={`message ${message.role} ${message.status}`} data-testid={`message-${message.role}`} data-status={message.status}>
            <p>{message.content || (message.status === 'streaming' ? '…' : '')}</p>
            {message.status === 'failed' && <small>The assistant could not finish this reply.</small>}
            {message.status === 'stopped' && <small>Stopped.</small>}
          </article>
        ))}
      </div>
      {send.error && (
        <ErrorNotice
          error={send.error}
          retry={() => {
            if (!send.variables) return;
            if (view.current) view.current.atBottom = true;
            send.mutate(send.variables, { onSuccess: () => setDraft('') });
          }}
        />
      )}
      {stop.error && <ErrorNotice error={stop.error} retry={() => stop.mutate({ sessionId })} />}
      <form
        className="composer"
        onSubmit={(event) => {
          event.preventDefault();
          const content = draft.trim();
          // One reply at a time: Stop first.
          if (!content || streaming) return;
          if (view.current) view.current.atBottom = true;
          send.mutate({ sessionId, content }, { onSuccess: () => setDraft('') });
        }}
      >
        <textarea
          aria-label="Message"
          value={draft}
          maxLength={32_000}
          onChange={(event) => setDraft(event.target.value)}
          onKeyDown={(event) => {
            if (event.key === 'Enter' && !event.shiftKey) {
              event.preventDefault();
              event.currentTarget.form?.requestSubmit();
            }
          }}
        />
        {streaming ? (
          <button type="button" onClick={() => stop.mutate({ sessionId })} disabled={stop.isPending}>
            Stop
          </button>
        ) : (
          <button type="submit" disabled={send.isPending || draft.trim() === ''}>
            Send
          </button>
        )}
      </form>
    </section>
  );
}
