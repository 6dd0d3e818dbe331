/// <reference types="vite/client" />

/** True while the dev server serves the page (`npm run web`), false in every build. */
declare const __LOCAL_SIGN_IN__: boolean;

interface ImportMetaEnv {
  /** The API's origin, for a page on another origin (its CORS_ORIGINS must list the page's). */
  readonly VITE_API_URL?: string;
  readonly VITE_FRONTEGG_BASE_URL?: string;
  readonly VITE_FRONTEGG_CLIENT_ID?: string;
}
