/**
 * Quotes one argument for the POSIX shell that sshd runs each command in.
 * The transport quotes every path and name with this before it reaches a
 * remote command line, because they come from configuration and must never
 * be parsed as shell syntax.
 */
export function shellQuote(value: string): string {
  if (/^[A-Za-z0-9_./:=@%+-]+$/.test(value)) {
    return value;
  }
  return `'${value.replace(/'/g, `'\\''`)}'`;
}
