/** A time in ms since the epoch as ISO 8601, "" for none (the API's empty string). */
export const iso = (ms: number | undefined) => (ms === undefined ? "" : new Date(ms).toISOString());
