import { useInfiniteQuery, useMutation, useQueryClient } from '@tanstack/react-query';
import { useTRPC } from './api.js';
import { ErrorNotice } from './errors.js';

/** The person's conversations, most recent activity first, with new, rename, delete and switch. */
export function SessionList({
  selected,
  onSelect,
  onDeleted,
}: {
  selected: string | null;
  onSelect: (sessionId: string) => void;
  onDeleted: (sessionId: string) => void;
}) {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  // Listed once the active session is known: a first visit creates it, and the list must hold it.
  const sessions = useInfiniteQuery(
    trpc.chat.listSessions.infiniteQueryOptions({ limit: 20 }, { getNextPageParam: (page) => page.nextCursor, enabled: selected !== null }),
  );
  const refresh = () => queryClient.invalidateQueries({ queryKey: trpc.chat.listSessions.pathKey() });
  const create = useMutation(trpc.chat.createSession.mutationOptions({ onSuccess: (session) => (onSelect(session.id), refresh()) }));
  const rename = useMutation(trpc.chat.renameSession.mutationOptions({ onSuccess: refresh }));
  const remove = useMutation(
    trpc.chat.deleteSession.mutationOptions({
      onSuccess: ({ sessionId }) => {
        // Shown no more (the page goes back to the active one, a new one if that was it); the
        // event tells every other tab the same.
        onDeleted(sessionId);
        void queryClient.invalidateQueries({ queryKey: trpc.chat.getActiveSession.queryKey() });
        return refresh();
      },
    }),
  );
  const activate = useMutation(trpc.chat.setActiveSession.mutationOptions({ onSuccess: refresh }));
  const items = sessions.data?.pages.flatMap((page) => page.items) ?? [];
  const failed = create.error ?? rename.error ?? remove.error ?? activate.error;

  return (
    <nav className="sessions" aria-label="Conversations">
      <button type="button" className="new" onClick={() => create.mutate({})} disabled={create.isPending}>
        New chat
      </button>
      {sessions.isLoading && <p className="notice">Loading…</p>}
      {sessions.error && <ErrorNotice error={sessions.error} retry={() => void sessions.refetch()} />}
      {failed && <ErrorNotice error={failed} />}
      {sessions.isSuccess && items.length === 0 && <p className="notice">No conversations yet.</p>}
      <ul>
        {items.map((session) => (
          <li key={session.id} className={session.id === selected ? 'selected' : undefined} data-testid="session">
            <button
              type="button"
              className="title"
              onClick={() => {
                onSelect(session.id);
                if (!session.isActive) activate.mutate({ sessionId: session.id });
              }}
            >
              {session.title}
            </button>
            <button
              type="button"
              aria-label={`Rename ${session.title}`}
              onClick={() => {
                const title = window.prompt('New title', session.title)?.trim();
                if (title) rename.mutate({ sessionId: session.id, title });
              }}
            >
              ✎
            </button>
            <button type="button" aria-label={`Delete ${session.title}`} onClick={() => remove.mutate({ sessionId: session.id })}>
              ×
            </button>
          </li>
        ))}
      </ul>
      {sessions.hasNextPage && (
        <button type="button" onClick={() => void sessions.fetchNextPage()} disabled={sessions.isFetchingNextPage}>
          More
        </button>
      )}
    </nav>
  );
}
