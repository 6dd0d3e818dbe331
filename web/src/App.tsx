import { useQuery, useQueryClient } from '@tanstack/react-query';
import { useSubscription } from '@trpc/tanstack-react-query';
import { useEffect, useState } from 'react';
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
  const sessionId = chosen ?? active.data?.id ?? null;

  // One stream for every change to this person's chats, from any tab or instance.
  const events = useSubscription(
    trpc.chat.events.subscriptionOptions(undefined, {
      onData: ({ data }) =>
        applyChatEvent(
          queryClient,
          {
            sessions: trpc.chat.listSessions.pathKey(),
            messagesOf: (id) => trpc.chat.listMessages.infiniteQueryKey({ sessionId: id, limit: MESSAGES_PAGE }),
            all: trpc.chat.pathKey(),
          },
          data,
        ),
    }),
  );

  // Refused for its token (one the API no longer takes): a new token, and the stream again.
  const { error: streamError, reset: resubscribe } = events;
  useEffect(() => {
    if (codeOf(streamError) === 'UNAUTHORIZED') void auth.refresh().then(resubscribe);
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
      {events.error && codeOf(events.error) !== 'UNAUTHORIZED' && <ErrorNotice error={events.error} retry={() => events.reset()} />}
      <main>
        <SessionList selected={sessionId} onSelect={setChosen} />
        {active.error && !sessionId ? (
          <ErrorNotice error={active.error} retry={() => void active.refetch()} />
        ) : sessionId ? (
          <Conversation key={sessionId} sessionId={sessionId} />
        ) : (
          <p className="notice">Loading…</p>
        )}
      </main>
    </div>
  );
}
