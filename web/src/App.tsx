import { useQuery, useQueryClient } from '@tanstack/react-query';
import { useSubscription } from '@trpc/tanstack-react-query';
import { useCallback, useEffect, useRef, useState } from 'react';
import { codeOf, useTRPC } from './api.js';
import { useAuth } from './auth.js';
import { MESSAGES_PAGE, applyChatEvent } from './chat-cache.js';
import { Conversation } from './Conversation.js';
import { ErrorNotice } from './errors.js';
import { SessionList } from './SessionList.js';

export function App() {
  const auth = useAuth();
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const active = useQuery(trpc.chat.getActiveSession.queryOptions());
  const [chosen, setChosen] = useState<string | null>(null);
  // Sessions deleted here or elsewhere: the active one may be one of them until it is loaded again.
  const [deleted, setDeleted] = useState<ReadonlySet<string>>(new Set());
  const activeId = active.data && !deleted.has(active.data.id) ? active.data.id : null;
  const sessionId = chosen !== null && !deleted.has(chosen) ? chosen : activeId;
  const forget = useCallback((id: string) => setDeleted((before) => (before.has(id) ? before : new Set(before).add(id))), []);

  // Once an event has arrived, a reconnection resumes after it (tRPC sends its id). A stream
  // that starts afresh (the first, or one opened again after an error) may have missed changes
  // since the lists were loaded: they are loaded again.
  const resumable = useRef(false);
  // Refusals of the stream since it last delivered: renewed once, then shown.
  const refusals = useRef(0);
  const events = useSubscription(
    trpc.chat.events.subscriptionOptions(undefined, {
      onStarted: () => {
        if (!resumable.current) void queryClient.invalidateQueries({ queryKey: trpc.chat.pathKey() });
      },
      onData: ({ data }) => {
        resumable.current = true;
        refusals.current = 0;
        auth.accepted();
        applyChatEvent(
          queryClient,
          {
            sessions: trpc.chat.listSessions.pathKey(),
            activeSession: trpc.chat.getActiveSession.queryKey(),
            messagesOf: (id) => trpc.chat.listMessages.infiniteQueryKey({ sessionId: id, limit: MESSAGES_PAGE }),
            all: trpc.chat.pathKey(),
          },
          data,
        );
        // The conversation on screen was deleted, in another tab say: back to the active one.
        if (data.type === 'session.deleted') forget(data.sessionId);
      },
    }),
  );
  const { error: streamError, reset } = events;
  // A new stream, which starts afresh.
  const resubscribe = useCallback(() => {
    resumable.current = false;
    reset();
  }, [reset]);
  // Refused for its token: once more with a new one; refused again, the error stands.
  useEffect(() => {
    if (codeOf(streamError) !== 'UNAUTHORIZED' || refusals.current > 0 || !auth.renewAfterRefusal()) return;
    refusals.current += 1;
    resubscribe();
  }, [streamError, resubscribe, auth]);

  return (
    <div className="app">
      <header>
        <strong>Chat</strong>
        <span className="who" data-testid="who">
          {auth.who}
        </span>
        <span className={`live ${events.status}`} title="Live updates">
          {events.status === 'pending' ? 'live' : events.status === 'error' ? 'offline' : 'connecting'}
        </span>
        <button type="button" onClick={() => auth.signOut()}>
          Sign out
        </button>
      </header>
      {streamError && <ErrorNotice error={streamError} retry={resubscribe} />}
      <main>
        <SessionList selected={sessionId} onSelect={setChosen} onDeleted={forget} />
        {active.error && !sessionId ? (
          <ErrorNotice error={active.error} retry={() => void active.refetch()} />
        ) : sessionId ? (
          <Conversation key={sessionId} sessionId={sessionId} onGone={forget} />
        ) : (
          <p className="notice">Loading…</p>
        )}
      </main>
    </div>
  );
}
