import { mkdirSync } from 'node:fs';
import { lockSync } from 'proper-lockfile';

// A holder that stops refreshing its lock for this long (crashed, or killed) has given it up.
// PGlite runs statements on the event loop, so this is well above any one statement's time.
const STALE_AFTER_MS = 30_000;

/** Another process holds the embedded database's folder. */
export class DataDirInUseError extends Error {
  override name = 'DataDirInUseError';
}

/**
 * Creates PGlite's data folder with its parents (PGlite creates only the last one) and claims it
 * for this process until the returned function is called or the process exits. PGlite is one
 * process's database, and it does not lock its folder itself: two processes writing one folder
 * corrupt it. The server and drizzle-kit both claim it first, so the second is refused.
 */
export function claimPgliteDataDir(dataDir: string): () => void {
  mkdirSync(dataDir, { recursive: true });
  try {
    return lockSync(dataDir, { stale: STALE_AFTER_MS });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ELOCKED') throw error;
    throw new DataDirInUseError(
      `The embedded database in ${dataDir} is in use by another process (a running \`npm start\`?): PGlite ` +
        `serves one process at a time, so stop that one first. A holder that was killed frees it within ` +
        `${STALE_AFTER_MS / 1000} s.`,
    );
  }
}
