/**
 * Quotes one argument for the POSIX shell that sshd runs each command in.
 * Every value that reaches a remote command line goes through this, because
 * paths and names come from configuration and must never be parsed as shell
 * syntax.
 */
export function shellQuote(value: string): string {
  if (/^[A-Za-z0-9_./:=@%+-]+$/.test(value)) {
    return value;
  }
  return `'${value.replace(/'/g, `'\\''`)}'`;
}
