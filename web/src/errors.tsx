import { codeOf } from './api.js';

/** A failed call as a person reads it: a retry notice while the service is unavailable, a plain sentence otherwise. */
export function ErrorNotice({ error, retry }: { error: unknown; retry?: () => void }) {
  const code = codeOf(error);
  if (code === 'SERVICE_UNAVAILABLE' || code === undefined) {
    return (
      <p className="notice retry" role="alert">
        The service is unavailable for a moment.{' '}
        {retry && (
          <button type="button" onClick={retry}>
            Retry
          </button>
        )}
      </p>
    );
  }
  const sentence =
    code === 'UNAUTHORIZED'
      ? 'Your sign-in is no longer accepted: sign out, and sign in again.'
      : code === 'FORBIDDEN'
      ? 'You do not have access to this organization.'
      : code === 'NOT_FOUND'
        ? 'This conversation no longer exists.'
        : code === 'TOO_MANY_REQUESTS'
          ? 'Too many requests at once; try again in a moment.'
          : code === 'CONFLICT'
            ? 'The assistant is still answering; stop it or wait.'
            : ((error as Error).message ?? 'Something went wrong.');
  return (
    <p className="notice error" role="alert">
      {sentence}
    </p>
  );
}
