/**
 * Limits the server enforces and the typed client respects. No imports: frontends bundle this.
 */

/** Calls in one HTTP batch; a longer batch is refused with 400. The client splits its batches at this size. */
export const MAX_BATCH_SIZE = 10;

/** Request bodies above this are refused with 413. */
export const MAX_BODY_BYTES = 1024 * 1024;
