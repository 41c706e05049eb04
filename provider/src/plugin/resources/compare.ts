/**
 * Compares property values by content. Objects that crossed the gRPC wire
 * come back with their keys sorted, so key order must not count.
 */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value ?? null, (_key, inner: unknown) => {
    if (inner && typeof inner === "object" && !Array.isArray(inner)) {
      const entries = Object.entries(inner as Record<string, unknown>);
      entries.sort(([left], [right]) => left.localeCompare(right, "en"));
      return Object.fromEntries(entries);
    }
    return inner;
  });
}

export function sameValue(left: unknown, right: unknown): boolean {
  return canonicalJson(left) === canonicalJson(right);
}
