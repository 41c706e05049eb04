/**
 * Byte sizes as users write them ("512MiB", "2G", "1073741824") and as the
 * kernel wants them (a whole number of bytes).
 */

const BINARY_UNITS: Record<string, number> = {
  "": 1,
  B: 1,
  K: 1024,
  KI: 1024,
  KIB: 1024,
  KB: 1000,
  M: 1024 ** 2,
  MI: 1024 ** 2,
  MIB: 1024 ** 2,
  MB: 1000 ** 2,
  G: 1024 ** 3,
  GI: 1024 ** 3,
  GIB: 1024 ** 3,
  GB: 1000 ** 3,
  T: 1024 ** 4,
  TI: 1024 ** 4,
  TIB: 1024 ** 4,
  TB: 1000 ** 4,
};

const SIZE_PATTERN = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/;

export const SIZE_EXAMPLES = '"512MiB", "2G", "1.5GiB" or a number of bytes';

/**
 * Parses a byte size. Single-letter and "Xi"/"XiB" suffixes are binary
 * (K = 1024), as in Kubernetes and Docker; "KB", "MB", "GB" and "TB" are
 * decimal. Returns undefined when the text is not a size, so callers can
 * build an error that names the field.
 */
export function parseByteSize(value: string | number): number | undefined {
  if (typeof value === "number") {
    return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  }
  const match = SIZE_PATTERN.exec(value);
  if (!match) return undefined;
  const multiplier = BINARY_UNITS[match[2].toUpperCase()];
  if (multiplier === undefined) return undefined;
  const bytes = Math.floor(Number(match[1]) * multiplier);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

/** Formats bytes with the largest binary unit that divides them exactly. */
export function formatByteSize(bytes: number): string {
  for (const [suffix, factor] of [["TiB", 1024 ** 4], ["GiB", 1024 ** 3], ["MiB", 1024 ** 2], ["KiB", 1024]] as const) {
    if (bytes >= factor && bytes % factor === 0) return `${bytes / factor}${suffix}`;
  }
  return `${bytes}B`;
}
